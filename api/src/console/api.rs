//! The `/v1` API as the signed-in person: requests go through the same router (and so the
//! same bearer check, scopes, tenant isolation and validation) that outside clients reach,
//! in-process. A problem+json answer becomes a [`PageError`] showing the API's `detail`.

use axum::body::{Body, Bytes};
use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tower::ServiceExt as _;

use super::{Chrome, ConsoleInfo, PageError};

/// The largest answer a page reads into memory (downloads are streamed, not read).
const MAX_BODY: usize = 16 << 20;

pub struct Api {
    router: Router,
    token: String,
    console: &'static ConsoleInfo,
    /// Error pages keep the person's header and navigation.
    chrome: Option<Chrome>,
}

#[derive(Debug, Deserialize)]
struct ProblemBody {
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
}

/// A list page of the API (`{items, next_after}`).
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub next_after: Option<String>,
}

/// One path segment taken from a URL: letters, digits, `-`, `_` and `.` (not first), so
/// nothing a person types can reach another API route (`..` cannot be formed).
pub fn segment<'a>(console: &'static ConsoleInfo, id: &'a str) -> Result<&'a str, PageError> {
    if !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        Ok(id)
    } else {
        Err(PageError::not_found(
            console,
            format!("no such item {id:?}"),
        ))
    }
}

/// A query string from pairs (values encoded).
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            s.append_pair(k, v);
        }
    }
    let q = s.finish();
    if q.is_empty() {
        q
    } else {
        format!("?{q}")
    }
}

impl Api {
    pub fn new(
        router: Router,
        token: String,
        console: &'static ConsoleInfo,
        chrome: Option<Chrome>,
    ) -> Self {
        Self {
            router,
            token,
            console,
            chrome,
        }
    }

    /// GET a JSON resource.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, PageError> {
        let (_, body) = self.call(Method::GET, path, None).await?;
        self.parse(&body)
    }

    /// GET a JSON resource that may not exist (404 is `None`, not an error).
    pub async fn find<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, PageError> {
        match self.call(Method::GET, path, None).await {
            Ok((_, body)) => self.parse(&body).map(Some),
            Err(e) if e.status == StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// POST a JSON body; answers the API's JSON.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, PageError> {
        let (_, bytes) = self.call(Method::POST, path, Some(body)).await?;
        self.parse(&bytes)
    }

    /// PUT a JSON body; answers the API's JSON.
    pub async fn put(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, PageError> {
        let (_, bytes) = self.call(Method::PUT, path, Some(body)).await?;
        self.parse(&bytes)
    }

    /// DELETE a resource; answers the API's JSON.
    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, PageError> {
        let (_, bytes) = self.call(Method::DELETE, path, None).await?;
        self.parse(&bytes)
    }

    /// GET a file and hand it to the browser as a download named `filename`, streamed
    /// through (artifacts and evidence archives may be large).
    pub async fn download(&self, path: &str, filename: &str) -> Result<Response, PageError> {
        let response = self.send(Method::GET, path, None).await?;
        let (parts, body) = response.into_parts();
        if !parts.status.is_success() {
            let bytes = axum::body::to_bytes(body, MAX_BODY)
                .await
                .map_err(|_| PageError::internal(self.console))?;
            return Err(self.problem(parts.status, &bytes));
        }
        let kind = parts
            .headers
            .get(CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        let mut response = Response::new(body);
        response.headers_mut().insert(CONTENT_TYPE, kind);
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
            response.headers_mut().insert(CONTENT_DISPOSITION, v);
        }
        Ok(response)
    }

    /// GET a file's bytes for the page to use (an evidence archive to verify), up to
    /// `limit` bytes; a larger one is refused with a clear page, never read whole.
    pub async fn bytes(&self, path: &str, limit: usize) -> Result<Bytes, PageError> {
        let (parts, body) = self.send(Method::GET, path, None).await?.into_parts();
        if !parts.status.is_success() {
            let bytes = axum::body::to_bytes(body, MAX_BODY)
                .await
                .map_err(|_| PageError::internal(self.console))?;
            return Err(self.problem(parts.status, &bytes));
        }
        axum::body::to_bytes(body, limit).await.map_err(|_| {
            PageError::new(
                self.console,
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too large to check here",
                format!("the file is larger than {limit} bytes; download it and check it offline"),
            )
        })
    }

    /// POST raw bytes of `content_type`; answers the API's JSON.
    pub async fn post_bytes(
        &self,
        path: &str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<serde_json::Value, PageError> {
        let (parts, body) = self
            .send_body(Method::POST, path, Some((content_type, Body::from(body))))
            .await?
            .into_parts();
        let bytes = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| PageError::internal(self.console))?;
        if !parts.status.is_success() {
            return Err(self.problem(parts.status, &bytes));
        }
        self.parse(&bytes)
    }

    fn parse<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, PageError> {
        serde_json::from_slice(body).map_err(|e| {
            tracing::error!(error = %e, "a console could not read the API's answer");
            PageError::internal(self.console)
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, PageError> {
        let body = match body {
            Some(b) => Some((
                "application/json",
                Body::from(serde_json::to_vec(b).map_err(|_| PageError::internal(self.console))?),
            )),
            None => None,
        };
        self.send_body(method, path, body).await
    }

    async fn send_body(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Body)>,
    ) -> Result<Response, PageError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/v1{path}"))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(ACCEPT, "application/json");
        let body = match body {
            Some((kind, b)) => {
                request = request.header(CONTENT_TYPE, kind);
                b
            }
            None => Body::empty(),
        };
        let request = request
            .body(body)
            .map_err(|_| PageError::internal(self.console))?;
        self.router
            .clone()
            .oneshot(request)
            .await
            .map_err(|_| PageError::internal(self.console))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(HeaderMap, Bytes), PageError> {
        let (parts, body) = self.send(method, path, body).await?.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| PageError::internal(self.console))?;
        if parts.status.is_success() {
            Ok((parts.headers, bytes))
        } else {
            Err(self.problem(parts.status, &bytes))
        }
    }

    /// A problem+json answer as the page to show (its `detail`).
    fn problem(&self, status: StatusCode, bytes: &[u8]) -> PageError {
        let problem: ProblemBody = serde_json::from_slice(bytes).unwrap_or(ProblemBody {
            title: String::new(),
            detail: String::new(),
        });
        let title = if problem.title.is_empty() {
            status.canonical_reason().unwrap_or("Error").to_owned()
        } else {
            problem.title
        };
        let mut error = PageError::new(self.console, status, title, problem.detail);
        if status == StatusCode::UNAUTHORIZED {
            // The token no longer works (revoked, or the person was disabled).
            error.title = "Your session has ended".into();
            error.sign_in = true;
        } else {
            error.chrome = self.chrome.clone().map(Box::new);
        }
        error
    }
}
