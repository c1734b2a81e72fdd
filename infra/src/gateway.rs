//! The Portal's clients of the other services: QSA (its token endpoint and JWKS) and
//! QuantumLock (licences). The same code runs when the services share one process (it then
//! calls its own public URL) and when they run apart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use quantus_domain::licensing::license::LicenseIssued;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The other service answered with an error (status, its problem detail).
    #[error("{service} answered {status}: {detail}")]
    Refused {
        service: &'static str,
        status: u16,
        detail: String,
    },
    /// The other service could not be reached or answered nonsense.
    #[error("{service} is unavailable: {detail}")]
    Unavailable {
        service: &'static str,
        detail: String,
    },
}

impl GatewayError {
    /// What a failed licence request waits for when the failure can pass, or `None` when
    /// QuantumLock refused the request itself for good (a 4xx other than 401, 408 and 429,
    /// and other than the 409 of a suspended organization). Anything QSA answers (the
    /// Portal's own token), anything unreachable, and every 5xx can pass.
    pub fn hold(&self) -> Option<quantus_domain::commercial::contract::LicenseHold> {
        use quantus_domain::commercial::contract::LicenseHold;
        match self {
            GatewayError::Unavailable { .. } => Some(LicenseHold::Unavailable),
            GatewayError::Refused {
                service: "QuantumLock",
                status: 409,
                detail,
            } if suspended_organization(detail) => Some(LicenseHold::OrganizationSuspended),
            GatewayError::Refused {
                service: "QuantumLock",
                status,
                ..
            } if (400..500).contains(status) && ![401, 408, 429].contains(status) => None,
            GatewayError::Refused { .. } => Some(LicenseHold::Unavailable),
        }
    }
}

/// QuantumLock's refusal of anything new inside a suspended organization ("organization <id>
/// is suspended", the precondition every creating command checks).
fn suspended_organization(detail: &str) -> bool {
    detail.starts_with("organization ") && detail.ends_with(" is suspended")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("a TLS-less HTTP client builds")
}

async fn refused(service: &'static str, response: reqwest::Response) -> GatewayError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("detail")
                .or_else(|| v.get("error_description"))
                .or_else(|| v.get("error"))
                .and_then(|d| d.as_str().map(str::to_owned))
        })
        .unwrap_or(body);
    GatewayError::Refused {
        service,
        status,
        detail,
    }
}

fn unavailable(service: &'static str) -> impl Fn(reqwest::Error) -> GatewayError {
    move |e| GatewayError::Unavailable {
        service,
        detail: e.to_string(),
    }
}

/// A service principal's client credentials at QSA.
#[derive(Debug, Clone)]
pub struct ServiceCredentials {
    /// QSA's issuer URL (the token endpoint is `<issuer>/oauth2/token`).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
}

/// An access token from the client-credentials grant, fetched when needed and reused until
/// shortly before it expires.
pub struct ServiceToken {
    http: reqwest::Client,
    credentials: ServiceCredentials,
    scope: String,
    cached: Mutex<Option<(String, Instant)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

impl ServiceToken {
    pub fn new(credentials: ServiceCredentials, scope: &str) -> Self {
        Self {
            http: http(),
            credentials,
            scope: scope.to_owned(),
            cached: Mutex::new(None),
        }
    }

    /// A bearer token valid for at least 30 more seconds.
    pub async fn bearer(&self) -> Result<String, GatewayError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() + Duration::from_secs(30) < *until {
                return Ok(token.clone());
            }
        }
        let url = format!(
            "{}/oauth2/token",
            self.credentials.issuer.trim_end_matches('/')
        );
        let response = self
            .http
            .post(url)
            .basic_auth(
                &self.credentials.client_id,
                Some(&self.credentials.client_secret.0),
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&scope={}",
                self.scope.replace(' ', "+")
            ))
            .send()
            .await
            .map_err(unavailable("QSA"))?;
        if !response.status().is_success() {
            return Err(refused("QSA", response).await);
        }
        let token: TokenResponse = response.json().await.map_err(unavailable("QSA"))?;
        // A day at most: an absurd `expires_in` must neither overflow nor pin a token forever.
        let until = Instant::now() + Duration::from_secs(token.expires_in.min(86_400));
        *cached = Some((token.access_token.clone(), until));
        Ok(token.access_token)
    }

    /// Forgets the cached token (after a 401: it was revoked or its key retired).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}

/// QSA's published token keys, fetched from its JWKS and cached. A token naming a key the
/// cache lacks triggers one refetch (at most every 10 s), so a rotation is followed at once;
/// the whole set is refetched after `max_age` so retired keys drop out.
pub struct JwksCache {
    http: reqwest::Client,
    url: String,
    max_age: Duration,
    state: Mutex<Option<(serde_json::Value, Instant)>>,
}

impl JwksCache {
    pub fn new(issuer: &str, max_age: Duration) -> Self {
        Self {
            http: http(),
            url: format!("{}/oauth2/jwks", issuer.trim_end_matches('/')),
            max_age,
            state: Mutex::new(None),
        }
    }

    /// The JWK with `kid`, or `None` when QSA does not publish it.
    pub async fn key(&self, kid: &str) -> Result<Option<serde_json::Value>, GatewayError> {
        let mut state = self.state.lock().await;
        let find = |set: &serde_json::Value| {
            set.get("keys")
                .and_then(|k| k.as_array())
                .and_then(|keys| {
                    keys.iter()
                        .find(|k| k.get("kid").and_then(|v| v.as_str()) == Some(kid))
                })
                .cloned()
        };
        if let Some((set, fetched)) = state.as_ref() {
            let fresh = fetched.elapsed() < self.max_age;
            match find(set) {
                Some(key) if fresh => return Ok(Some(key)),
                // Unknown kid: refetch, but not more than once a second (a flood of forged kids
                // must not become a flood of requests to QSA).
                None if fetched.elapsed() < Duration::from_secs(1) => return Ok(None),
                _ => {}
            }
        }
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(unavailable("QSA"))?;
        if !response.status().is_success() {
            return Err(refused("QSA", response).await);
        }
        let set: serde_json::Value = response.json().await.map_err(unavailable("QSA"))?;
        let key = find(&set);
        *state = Some((set, Instant::now()));
        Ok(key)
    }
}

/// What QuantumLock answered to an issue request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    Created,
    /// The licence already existed with these terms (a retry).
    AlreadyThere,
}

/// QuantumLock's licence API, called with the Portal's service-principal token.
#[derive(Clone)]
pub struct QuantumLockClient {
    http: reqwest::Client,
    base: String,
    token: Arc<ServiceToken>,
}

impl QuantumLockClient {
    pub fn new(base_url: &str, token: Arc<ServiceToken>) -> Self {
        Self {
            http: http(),
            base: base_url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, GatewayError> {
        for attempt in 0..2 {
            let bearer = self.token.bearer().await?;
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(bearer);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(unavailable("QuantumLock"))?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                self.token.forget().await;
                continue;
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// The licence as QuantumLock has it now, or `None`.
    pub async fn license(&self, id: &str) -> Result<Option<serde_json::Value>, GatewayError> {
        let response = self
            .send(reqwest::Method::GET, &format!("/v1/licenses/{id}"), None)
            .await?;
        match response.status() {
            s if s.is_success() => Ok(Some(
                response.json().await.map_err(unavailable("QuantumLock"))?,
            )),
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            _ => Err(refused("QuantumLock", response).await),
        }
    }

    /// Issues licence `id` with `terms`; a licence already there with the same terms is a
    /// success (so a process manager may retry after a crash).
    pub async fn issue(&self, id: &str, terms: &LicenseIssued) -> Result<Issued, GatewayError> {
        let body = serde_json::to_value(terms).map_err(|e| GatewayError::Unavailable {
            service: "QuantumLock",
            detail: e.to_string(),
        })?;
        let response = self
            .send(
                reqwest::Method::PUT,
                &format!("/v1/licenses/{id}"),
                Some(body),
            )
            .await?;
        match response.status().as_u16() {
            201 => Ok(Issued::Created),
            200 => Ok(Issued::AlreadyThere),
            _ => Err(refused("QuantumLock", response).await),
        }
    }

    /// Moves licence `id`'s expiry to `expires_at`, unless it is already there or later.
    pub async fn renew(&self, id: &str, expires_at: DateTime<Utc>) -> Result<(), GatewayError> {
        let current = self.license(id).await?.ok_or(GatewayError::Refused {
            service: "QuantumLock",
            status: 404,
            detail: format!("no licence {id} to renew"),
        })?;
        let now_expires = current
            .pointer("/terms/expires_at")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<DateTime<Utc>>().ok());
        if now_expires.is_some_and(|e| e >= expires_at) {
            return Ok(());
        }
        let response = self
            .send(
                reqwest::Method::POST,
                &format!("/v1/licenses/{id}/renew"),
                Some(serde_json::json!({ "expires_at": expires_at })),
            )
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(refused("QuantumLock", response).await)
    }

    /// Revokes licence `id`, unless it is already revoked or was never issued.
    pub async fn revoke(&self, id: &str, reason: &str) -> Result<(), GatewayError> {
        match self.license(id).await? {
            None => return Ok(()),
            Some(l) if l.get("status").and_then(|s| s.as_str()) == Some("revoked") => return Ok(()),
            Some(_) => {}
        }
        let response = self
            .send(
                reqwest::Method::POST,
                &format!("/v1/licenses/{id}/revoke"),
                Some(serde_json::json!({ "reason": reason })),
            )
            .await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(refused("QuantumLock", response).await)
    }

    /// The organization's licences (one page of QuantumLock's list).
    pub async fn licenses_of(
        &self,
        organization_id: &str,
        after: Option<&str>,
    ) -> Result<serde_json::Value, GatewayError> {
        let mut path = format!("/v1/licenses?org={organization_id}&limit=200");
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let response = self.send(reqwest::Method::GET, &path, None).await?;
        if response.status().is_success() {
            return response.json().await.map_err(unavailable("QuantumLock"));
        }
        Err(refused("QuantumLock", response).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantus_domain::commercial::contract::LicenseHold;

    fn refused(service: &'static str, status: u16, detail: &str) -> GatewayError {
        GatewayError::Refused {
            service,
            status,
            detail: detail.into(),
        }
    }

    #[test]
    fn failures_that_can_pass_are_told_from_permanent_ones() {
        let suspended = refused("QuantumLock", 409, "organization o1 is suspended");
        assert_eq!(suspended.hold(), Some(LicenseHold::OrganizationSuspended));
        for transient in [
            refused("QuantumLock", 503, "down"),
            refused("QuantumLock", 500, "internal"),
            refused("QuantumLock", 429, "slow down"),
            refused("QuantumLock", 408, "timeout"),
            refused("QuantumLock", 401, "expired"),
            refused("QSA", 400, "invalid_client"),
            GatewayError::Unavailable {
                service: "QuantumLock",
                detail: "connection refused".into(),
            },
        ] {
            assert_eq!(
                transient.hold(),
                Some(LicenseHold::Unavailable),
                "{transient}"
            );
        }
        for permanent in [
            refused("QuantumLock", 422, "max_activations must be positive"),
            refused(
                "QuantumLock",
                409,
                "licence already exists with other terms",
            ),
            refused("QuantumLock", 403, "forbidden"),
        ] {
            assert_eq!(permanent.hold(), None, "{permanent}");
        }
    }
}

/// QSA's OAuth endpoints reached over HTTP, for a console served by a process that is not QSA
/// (the Portal role): its code exchange, refresh, userinfo and revocation go to QSA itself.
#[derive(Clone)]
pub struct QsaEndpoints {
    http: reqwest::Client,
    issuer: String,
}

/// An answer of [`QsaEndpoints::send`].
pub struct Forwarded {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl QsaEndpoints {
    pub fn new(issuer: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a TLS-less HTTP client builds"),
            issuer: issuer.trim_end_matches('/').to_owned(),
        }
    }

    /// Sends `method path_and_query` with these headers and body to QSA; redirects are not
    /// followed (none of these endpoints answers one).
    pub async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Forwarded, GatewayError> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| {
            GatewayError::Unavailable {
                service: "QSA",
                detail: e.to_string(),
            }
        })?;
        let mut request = self
            .http
            .request(method, format!("{}{path_and_query}", self.issuer))
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(unavailable("QSA"))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.map_err(unavailable("QSA"))?.to_vec();
        Ok(Forwarded {
            status,
            content_type,
            body,
        })
    }
}
