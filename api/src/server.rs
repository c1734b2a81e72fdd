//! Serving HTTP/1.1 with bounds on clients: a cap on connections served at once, a header-read
//! timeout (hyper's), and an idle timeout on responses the client does not read. Request
//! bodies are bounded by [`crate::bodies`].
//!
//! Past the cap a connection is shed rather than left in the kernel's listen backlog (issue 17,
//! item 4): it is accepted, its one request is answered 503 problem+json with `Retry-After` and
//! `Connection: close`, and it is closed. A client thus learns in milliseconds that the server
//! is full instead of waiting, unseen by the server, for a slot. The shed connections are capped
//! too (`shed_connections`); past both caps connections wait in the backlog again.
//!
//! Write requests are bounded here too (`write_requests`, the write queue's depth): one past
//! it is answered 503 before any work, even authentication. Without it every request of an
//! overload shares the CPU until each arrives at the write queue too late to be admitted, and
//! goodput collapses; with it the CPU goes to the writes that can still finish in time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use quantus_infra::{arriving, HttpLimits};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tower::ServiceExt;

use crate::Problem;

/// Write requests shed here, before the write queue (which counts its own); `/metrics` adds
/// them into `quantus_writes_shed_total`. One count per process, as there is one server.
static WRITES_SHED: AtomicU64 = AtomicU64::new(0);

/// How many write requests were shed on arrival, before reaching the write queue.
pub fn writes_shed() -> u64 {
    WRITES_SHED.load(Ordering::Relaxed)
}

/// The most of a shed request's body read (and dropped) before the answer: closing a socket
/// with unread bytes resets it, and the client could lose the 503.
const SHED_BODY_BYTES: usize = 64 * 1024;

/// Serves `app` on `listener` until the task is dropped. Never returns but on a bug: a failed
/// accept (out of file descriptors, say) is logged and retried.
pub async fn serve(listener: TcpListener, app: Router, limits: HttpLimits) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let shed_slots = Arc::new(Semaphore::new(limits.shed_connections as usize));
    let writes = Arc::new(Semaphore::new(limits.write_requests as usize));
    let header_timeout = Duration::from_secs(limits.header_read_timeout_seconds);
    let idle = Duration::from_secs(limits.idle_timeout_seconds);
    loop {
        // A slot to serve, or else one to shed in; with neither, wait for whichever frees first
        // (the connection waits in the kernel's backlog meanwhile).
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Slot::Served(slot),
            Err(_) => match shed_slots.clone().try_acquire_owned() {
                Ok(slot) => Slot::Shed(slot),
                Err(_) => tokio::select! {
                    slot = slots.clone().acquire_owned() => Slot::Served(slot.map_err(closed)?),
                    slot = shed_slots.clone().acquire_owned() => Slot::Shed(slot.map_err(closed)?),
                },
            },
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        match slot {
            Slot::Served(slot) => {
                let (app, writes) = (app.clone(), writes.clone());
                let retry_after = limits.retry_after_seconds;
                let service =
                    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        // The write queue's deadline counts from here, not from admission.
                        let arrived = tokio::time::Instant::now();
                        req.extensions_mut().insert(ConnectInfo(peer));
                        let slot = if is_write(&req) {
                            writes.clone().try_acquire_owned().map(Some)
                        } else {
                            Ok(None)
                        };
                        let app = app.clone();
                        async move {
                            let Ok(_slot) = slot else {
                                WRITES_SHED.fetch_add(1, Ordering::Relaxed);
                                return Ok(Problem::unavailable(
                                    "the server is serving as many writes as it may; nothing of \
                                 this request was done; try again after Retry-After",
                                    retry_after,
                                )
                                .into_response());
                            };
                            arriving(arrived, app.oneshot(req.map(Body::new))).await
                        }
                    });
                let io = TokioIo::new(Connection::new(stream, idle, slot));
                tokio::spawn(async move {
                    if let Err(e) = http.serve_connection(io, service).await {
                        tracing::debug!(error = %e, %peer, "connection ended");
                    }
                });
            }
            Slot::Shed(slot) => {
                let retry_after = limits.retry_after_seconds;
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    shed(req, header_timeout, retry_after)
                });
                // One request, then `Connection: close`.
                http.keep_alive(false);
                let io = TokioIo::new(Connection::new(stream, idle, slot));
                tokio::spawn(async move {
                    if let Err(e) = http.serve_connection(io, service).await {
                        tracing::debug!(error = %e, %peer, "shed connection ended");
                    }
                });
            }
        }
    }
}

/// A request that may write: an unsafe method, but for the OAuth endpoints (token issuance,
/// introspection and revocation stay served while writes are shed).
fn is_write<B>(req: &hyper::Request<B>) -> bool {
    !req.method().is_safe() && !req.uri().path().starts_with("/oauth2/")
}

/// Which cap a connection was accepted under.
enum Slot {
    Served(OwnedSemaphorePermit),
    Shed(OwnedSemaphorePermit),
}

fn closed(_: tokio::sync::AcquireError) -> io::Error {
    io::Error::other("the connection semaphore closed")
}

/// The answer on a connection past the cap: 503 problem+json with `Retry-After`, after the
/// request's (small) body is read so that closing the socket does not reset it.
async fn shed(
    req: hyper::Request<Incoming>,
    wait: Duration,
    retry_after_seconds: u64,
) -> Result<axum::response::Response, std::convert::Infallible> {
    let body = axum::body::to_bytes(Body::new(req.into_body()), SHED_BODY_BYTES);
    let _ = tokio::time::timeout(wait, body).await;
    tracing::debug!("a connection past the cap was shed");
    let mut response = Problem::unavailable(
        "the server is serving as many connections as it may (QUANTUS_MAX_CONNECTIONS); \
         nothing of this request was done; try again after Retry-After",
        retry_after_seconds,
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    Ok(response)
}

/// A client connection: holds its slot until dropped, and fails a write the client has not
/// accepted a byte of for `idle` (a client that stops reading its response).
struct Connection {
    stream: TcpStream,
    idle: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    fn new(stream: TcpStream, idle: Duration, slot: OwnedSemaphorePermit) -> Self {
        Self {
            stream,
            idle,
            stalled: None,
            _slot: slot,
        }
    }

    /// Counts a blocked write against the idle timeout; progress resets it.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client accepted no bytes of the response within the idle timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            done => {
                self.stalled = None;
                done
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Reads are bounded by the header-read and body timeouts, which know what is awaited.
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
