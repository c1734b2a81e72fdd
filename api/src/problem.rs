//! RFC 9457 problem details: the one error type of the HTTP layer, mapped once.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use quantus_commands::CommandError;
use quantus_infra::InfraError;
use serde::Serialize;
use utoipa::ToSchema;

/// A problem+json body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `https://quantus.dev/problems/<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Seconds for a `Retry-After` header (503 while writes are shed); not in the body.
    #[serde(skip)]
    #[schema(ignore)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("https://quantus.dev/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 503 with `Retry-After`: the service sheds this request; nothing of it was done.
    pub fn unavailable(detail: impl Into<String>, retry_after_seconds: u64) -> Self {
        Self {
            retry_after: Some(retry_after_seconds.max(1)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Service overloaded",
                detail,
            )
        }
    }

    /// 412: the version an `If-Match` named is not the current one (RFC 9110 §13.1.1).
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "Precondition failed",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Invalid request",
            detail,
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn internal() -> Self {
        // Never echo internal details (they may name tables, hosts or secrets).
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the request could not be completed; it was logged",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<CommandError> for Problem {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid(d) => Problem::unprocessable(d),
            CommandError::NotFound(d) => Problem::not_found(d),
            CommandError::Rejected(d) => {
                Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", d)
            }
            CommandError::Concurrency(d) => Problem::new(
                StatusCode::CONFLICT,
                "concurrency-conflict",
                "Concurrent modification",
                d,
            ),
            CommandError::QuotaExceeded(d) => {
                Problem::new(StatusCode::FORBIDDEN, "quota-exceeded", "Quota exceeded", d)
            }
            CommandError::Upstream(d) => {
                tracing::warn!(error = %d, "an upstream service failed");
                Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream",
                    "Upstream service failed",
                    d,
                )
            }
            CommandError::Storage(d) => {
                tracing::error!(error = %d, "command failed in storage");
                Problem::internal()
            }
            CommandError::Unavailable {
                detail,
                retry_after_seconds,
            } => Problem::unavailable(detail, retry_after_seconds),
        }
    }
}

impl From<InfraError> for Problem {
    fn from(e: InfraError) -> Self {
        match e {
            InfraError::NotFound(d) => Problem::not_found(d),
            e => {
                tracing::error!(error = %e, "infrastructure error");
                Problem::internal()
            }
        }
    }
}

impl From<JsonRejection> for Problem {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => Problem::unprocessable(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as application/json",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
                other.body_text(),
            ),
            other => Problem::bad_request(other.body_text()),
        }
    }
}

/// A JSON body whose rejections are problem+json.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: axum::extract::FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// Query-string rejections as problem+json.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| Problem::bad_request(e.body_text()))
    }
}

/// A form body (`application/x-www-form-urlencoded`) whose rejections are problem+json: 415
/// for another media type, 400 for a body that does not decode.
pub struct ApiForm<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiForm<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::FormRejection;
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(value)) => Ok(Self(value)),
            Err(FormRejection::InvalidFormContentType(_)) => Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as application/x-www-form-urlencoded",
            )),
            Err(other) => Err(Problem::bad_request(other.body_text())),
        }
    }
}
