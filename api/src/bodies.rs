//! Bounds on request bodies, for every route whatever extractor reads the body: a size limit
//! (413) and read timeouts (408), enforced while the body streams.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use quantus_infra::HttpLimits;
use tokio::time::{Instant, Sleep};

use crate::{AppState, Problem};

const FINE: u8 = 0;
const TOO_LARGE: u8 = 1;
const TOO_SLOW: u8 = 2;

#[derive(Debug, thiserror::Error)]
enum BodyFault {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the request body arrived too slowly")]
    TooSlow,
}

/// Wraps every request body; answers 413 or 408 in place of whatever the handler made of the
/// failed read (a JSON rejection, an interrupted upload).
pub async fn bound(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limits = state.limits;
    let max = limit_of(&req, &limits);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Known too large from the head: refused before a byte of it is read.
    if declared.is_some_and(|len| len > max) {
        return too_large(max);
    }
    let fault = Arc::new(AtomicU8::new(FINE));
    let req = req.map(|inner| {
        Body::new(Bounded {
            inner,
            max,
            received: 0,
            limits,
            waited: Duration::ZERO,
            pending_since: None,
            timer: None,
            fault: fault.clone(),
        })
    });
    let response = next.run(req).await;
    match fault.load(Ordering::Acquire) {
        TOO_LARGE => too_large(max),
        TOO_SLOW => closing(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request body too slow",
            format!(
                "the request body stalled for {} s or arrived slower than {} bytes per second",
                limits.body_read_timeout_seconds, limits.min_body_bytes_per_second
            ),
        )),
        _ => response,
    }
}

/// The two routes that take large bodies have their own limits; every other has one.
fn limit_of(req: &Request, limits: &HttpLimits) -> u64 {
    let segments: Vec<&str> = req.uri().path().split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::PUT, ["", "v1", "jobs", _, "artifacts", _]) => limits.max_artifact_bytes,
        (&Method::POST, ["", "v1", "evidence", "verify"]) => limits.max_archive_bytes,
        _ => limits.max_body_bytes,
    }
}

fn too_large(max: u64) -> Response {
    closing(Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "Request body too large",
        format!("the request body must be at most {max} bytes"),
    ))
}

/// The rest of the body stays unread: the connection cannot carry another request.
fn closing(problem: Problem) -> Response {
    let mut response = problem.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A body that fails once it passes `max` bytes, or keeps the server waiting too long: one
/// wait longer than the body read timeout, or, past that grace, an average below the minimum
/// rate over the time spent waiting (time the handler spends elsewhere is not the client's).
struct Bounded {
    inner: Body,
    max: u64,
    received: u64,
    limits: HttpLimits,
    waited: Duration,
    pending_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    fault: Arc<AtomicU8>,
}

impl Bounded {
    fn fail(&self, kind: u8, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.fault.store(kind, Ordering::Release);
        Poll::Ready(Some(Err(axum::Error::new(fault))))
    }
}

impl HttpBody for Bounded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match this.fault.load(Ordering::Acquire) {
            TOO_LARGE => return this.fail(TOO_LARGE, BodyFault::TooLarge(this.max)),
            TOO_SLOW => return this.fail(TOO_SLOW, BodyFault::TooSlow),
            _ => {}
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = this.pending_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(Ok(f)) = &frame {
                    this.received += f.data_ref().map_or(0, |d| d.len() as u64);
                    if this.received > this.max {
                        return this.fail(TOO_LARGE, BodyFault::TooLarge(this.max));
                    }
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let since = *this.pending_since.get_or_insert_with(Instant::now);
                let gap = Duration::from_secs(this.limits.body_read_timeout_seconds);
                let by_rate = Duration::from_secs_f64(
                    this.received as f64 / this.limits.min_body_bytes_per_second as f64,
                );
                // What is left of the waiting budget, and never more than one gap at once.
                let left = gap.max(by_rate).saturating_sub(this.waited).min(gap);
                let deadline = since + left;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return this.fail(TOO_SLOW, BodyFault::TooSlow);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
