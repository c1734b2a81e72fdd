//! `Idempotency-Key` on creating requests (IETF httpapi idempotency-key draft), once for the
//! whole API: a POST with a key is carried out once per caller; a retry with the same body
//! gets the first answer again, a different body under the key 422, a retry while the first
//! is still running 409.
//!
//! Keys belong to a caller (tenant and principal): one caller's key never finds another's
//! answer. Only successful answers are kept: a failed request changed nothing (every write is
//! one command, all or nothing), so sending it again is safe and gets a fresh verdict.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use quantus_infra::idempotency::{Claim, IdempotencyKeys, StoredAnswer};
use quantus_infra::{Database, HttpLimits};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::Problem;

pub const HEADER: &str = "idempotency-key";
/// Marks a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
const MAX_KEY_LENGTH: usize = 255;
/// The headers that are part of an answer (and so of its replay).
const KEPT_HEADERS: [&str; 4] = ["content-type", "location", "etag", "quantus-log-position"];

#[derive(Clone)]
pub struct Idempotency {
    keys: IdempotencyKeys,
    keep: Duration,
}

impl Idempotency {
    pub fn new(db: Database, limits: &HttpLimits) -> Self {
        Self {
            keys: IdempotencyKeys::new(db),
            keep: Duration::from_secs(limits.idempotency_key_seconds),
        }
    }
}

/// The middleware; it runs after authentication (it needs the caller).
pub async fn idempotent(State(idem): State<Idempotency>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(value) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let key = match parse_key(value) {
        Ok(key) => key,
        Err(problem) => return problem.into_response(),
    };
    let Some(principal) = req.extensions().get::<Principal>() else {
        // Not an authenticated route: no caller to scope the key to.
        return next.run(req).await;
    };
    let scope = format!(
        "{}/{}/{}",
        principal.organization,
        principal.actor.kind.as_str(),
        principal.actor.id
    );
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        // Too large or too slow: the body layer outside answers 413 or 408 instead.
        Err(_) => {
            return Problem::bad_request("the request body could not be read").into_response()
        }
    };
    let fingerprint = fingerprint(&parts.method, &parts.uri, &parts.headers, &body);
    let claim = idem
        .keys
        .claim(&scope, &key, &fingerprint, chrono::Utc::now(), idem.keep)
        .await;
    match claim {
        Err(e) => Problem::from(e).into_response(),
        Ok(Claim::OtherRequest) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was used for a different request; send a new key",
        )
        .into_response(),
        Ok(Claim::InFlight) => Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-flight",
            "Request in progress",
            "a request with this Idempotency-Key is still being processed; retry later",
        )
        .into_response(),
        Ok(Claim::Answered(answer)) => replay(answer),
        Ok(Claim::New) => {
            let response = next.run(Request::from_parts(parts, Body::from(body))).await;
            keep(&idem, &scope, &key, response).await
        }
    }
}

/// The key: a Structured Field string (`"…"`, RFC 8941), or, leniently, the bare value.
fn parse_key(value: &HeaderValue) -> Result<String, Problem> {
    let invalid = || {
        Problem::bad_request(format!(
            "Idempotency-Key must be a string of 1 to {MAX_KEY_LENGTH} printable ASCII characters, e.g. \"8e03978e-40d5-43e8-bc93-6894a57f9324\""
        ))
    };
    let text = value.to_str().map_err(|_| invalid())?.trim();
    let key = match text.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"').ok_or_else(invalid)?;
            let mut key = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(e @ ('"' | '\\')) => key.push(e),
                        _ => return Err(invalid()),
                    },
                    '"' => return Err(invalid()),
                    c => key.push(c),
                }
            }
            key
        }
        None if !text.contains([' ', '"', '\\']) => text.to_owned(),
        None => return Err(invalid()),
    };
    let printable = key.chars().all(|c| (' '..='~').contains(&c));
    if key.is_empty() || key.len() > MAX_KEY_LENGTH || !printable {
        return Err(invalid());
    }
    Ok(key)
}

/// What makes two requests "the same": method, target and content.
fn fingerprint(
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str());
    h.update([0u8]);
    h.update(uri.path_and_query().map_or("", |p| p.as_str()));
    h.update([0u8]);
    h.update(
        headers
            .get(header::CONTENT_TYPE)
            .map_or(&[][..], |v| v.as_bytes()),
    );
    h.update([0u8]);
    h.update(body);
    hex::encode(h.finalize())
}

/// Keeps a successful answer for replays; gives the key up otherwise.
async fn keep(idem: &Idempotency, scope: &str, key: &str, response: Response) -> Response {
    let release = || async move {
        if let Err(e) = idem.keys.release(scope, key).await {
            tracing::error!(error = %e, "releasing an idempotency key failed");
        }
    };
    if !response.status().is_success() {
        release().await;
        return response;
    }
    let (parts, body) = response.into_parts();
    // Creating answers are small JSON documents, already whole in memory.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "reading an answer to keep failed");
            release().await;
            return Problem::internal().into_response();
        }
    };
    let mut headers = serde_json::Map::new();
    for name in KEPT_HEADERS {
        if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            headers.insert(name.to_owned(), v.into());
        }
    }
    match String::from_utf8(bytes.to_vec()) {
        Ok(body) => {
            let answer = StoredAnswer {
                status: parts.status.as_u16(),
                headers: serde_json::Value::Object(headers).to_string(),
                body,
            };
            if let Err(e) = idem.keys.answer(scope, key, &answer).await {
                tracing::error!(error = %e, "keeping an idempotent answer failed");
                release().await;
            }
        }
        // Not text: not kept (no creating route answers so), and the key is free again.
        Err(_) => release().await,
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(answer: StoredAnswer) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&answer.headers).unwrap_or_default();
    for (name, value) in headers {
        if let (Ok(name), Some(Ok(value))) = (
            HeaderName::try_from(name),
            value.as_str().map(HeaderValue::from_str),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::routing::post;
    use axum::Router;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    use super::*;

    fn principal(org: &str, id: &str) -> Principal {
        Principal::from_claims(quantus_commands::identity::AccessClaims {
            iss: "https://quantus.test".into(),
            sub: id.into(),
            aud: "quantus".into(),
            exp: 0,
            iat: 0,
            jti: "j".into(),
            client_id: id.into(),
            scope: String::new(),
            org: org.into(),
            roles: Default::default(),
            gid: "g".into(),
            auth_time: None,
            amr: None,
            acr: None,
            cnf: None,
        })
    }

    /// A creating route that counts its runs and, when asked, waits to be let go.
    struct Fixture {
        app: Router,
        runs: Arc<AtomicUsize>,
        started: Arc<Notify>,
        release: Arc<Notify>,
    }

    async fn fixture(hold: bool) -> Fixture {
        let dir = std::env::temp_dir().join(format!("quantus-idem-api-{}", uuid::Uuid::now_v7()));
        let db = Database::open(None, &dir).await.unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (r, s, l) = (runs.clone(), started.clone(), release.clone());
        let app = Router::new()
            .route(
                "/things",
                post(move |body: Bytes| async move {
                    let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                    if hold {
                        s.notify_one();
                        l.notified().await;
                    }
                    if body.as_ref() == b"fail" {
                        return Problem::unprocessable("no").into_response();
                    }
                    (
                        StatusCode::CREATED,
                        [(header::LOCATION, format!("/things/{n}"))],
                        axum::Json(serde_json::json!({ "id": n })),
                    )
                        .into_response()
                }),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                Idempotency::new(db, &HttpLimits::default()),
                idempotent,
            ))
            // Stands in for the bearer middleware: the caller comes from `x-caller`.
            .layer(axum::middleware::from_fn(
                |mut req: Request, next: Next| async move {
                    let caller = req.headers()["x-caller"].to_str().unwrap().to_owned();
                    let (org, id) = caller.split_once('/').unwrap();
                    let p = principal(org, id);
                    req.extensions_mut().insert(p);
                    next.run(req).await
                },
            ));
        Fixture {
            app,
            runs,
            started,
            release,
        }
    }

    async fn send(
        app: &Router,
        caller: &str,
        key: Option<&str>,
        body: &str,
    ) -> (u16, HeaderMap, String) {
        let mut req = axum::http::Request::post("/things").header("x-caller", caller);
        if let Some(k) = key {
            req = req.header(HEADER, k);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_same_key_and_body_replay_the_first_answer() {
        let f = fixture(false).await;
        let first = send(&f.app, "acme/robot", Some("\"k-1\""), "{}").await;
        assert_eq!((first.0, first.2.as_str()), (201, "{\"id\":1}"));
        let again = send(&f.app, "acme/robot", Some("\"k-1\""), "{}").await;
        assert_eq!((again.0, &again.2), (201, &first.2));
        assert_eq!(again.1["location"], "/things/1");
        assert_eq!(again.1["content-type"], "application/json");
        assert_eq!(again.1[REPLAYED], "true");
        assert!(!first.1.contains_key(REPLAYED));
        assert_eq!(f.runs.load(Ordering::SeqCst), 1);
        // A bare key is the same key as its quoted form.
        assert_eq!(
            send(&f.app, "acme/robot", Some("k-1"), "{}").await.2,
            first.2
        );
        // Without a key every request runs.
        send(&f.app, "acme/robot", None, "{}").await;
        assert_eq!(f.runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_same_key_with_another_body_is_422() {
        let f = fixture(false).await;
        assert_eq!(
            send(&f.app, "acme/robot", Some("\"k\""), "{\"a\":1}")
                .await
                .0,
            201
        );
        let (status, headers, body) = send(&f.app, "acme/robot", Some("\"k\""), "{\"a\":2}").await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(body.contains("idempotency-key-reused"), "{body}");
        assert_eq!(f.runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn keys_belong_to_their_caller() {
        let f = fixture(false).await;
        let acme = send(&f.app, "acme/robot", Some("\"k\""), "{}").await;
        let globex = send(&f.app, "globex/robot", Some("\"k\""), "{}").await;
        let other_principal = send(&f.app, "acme/person", Some("\"k\""), "{}").await;
        assert_eq!(acme.2, "{\"id\":1}");
        assert_eq!(globex.2, "{\"id\":2}");
        assert_eq!(other_principal.2, "{\"id\":3}");
        assert!(!globex.1.contains_key(REPLAYED));
    }

    #[tokio::test]
    async fn a_duplicate_while_the_first_runs_is_409_and_only_one_runs() {
        let f = fixture(true).await;
        let app = f.app.clone();
        let first =
            tokio::spawn(async move { send(&app, "acme/robot", Some("\"k\""), "{}").await });
        f.started.notified().await;
        let duplicates = futures::future::join_all(
            (0..19).map(|_| send(&f.app, "acme/robot", Some("\"k\""), "{}")),
        )
        .await;
        for (status, headers, body) in &duplicates {
            assert_eq!(*status, 409, "{body}");
            assert_eq!(headers["content-type"], "application/problem+json");
            assert!(body.contains("idempotency-key-in-flight"), "{body}");
        }
        f.release.notify_one();
        let first = first.await.unwrap();
        assert_eq!(first.0, 201);
        let later = send(&f.app, "acme/robot", Some("\"k\""), "{}").await;
        assert_eq!((later.0, later.2), (201, first.2));
        assert_eq!(f.runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_request_frees_its_key() {
        let f = fixture(false).await;
        assert_eq!(
            send(&f.app, "acme/robot", Some("\"k\""), "fail").await.0,
            422
        );
        assert_eq!(
            send(&f.app, "acme/robot", Some("\"k\""), "fail").await.0,
            422
        );
        assert_eq!(
            f.runs.load(Ordering::SeqCst),
            2,
            "a failure is not replayed"
        );
    }

    #[tokio::test]
    async fn malformed_keys_are_400() {
        let f = fixture(false).await;
        let long = format!("\"{}\"", "k".repeat(256));
        for key in [
            "\"\"",
            "\"unterminated",
            "two words",
            &long,
            "\"tab\there\"",
        ] {
            let (status, headers, body) = send(&f.app, "acme/robot", Some(key), "{}").await;
            assert_eq!(status, 400, "{key}: {body}");
            assert_eq!(headers["content-type"], "application/problem+json");
        }
        assert_eq!(f.runs.load(Ordering::SeqCst), 0);
    }
}
