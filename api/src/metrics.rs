//! Prometheus metrics and readiness.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::{AppState, Problem};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectionLabels {
    projection: String,
}

/// How `/readyz` judges the read models: not ready when one is behind the log and its
/// high-water mark has not moved for `stall_after`, or when it is more than `max_lag`
/// positions behind.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    pub stall_after: Duration,
    pub max_lag: u64,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(30),
            max_lag: 100_000,
        }
    }
}

/// Per read model: its high-water mark when last looked at, and since when it has been at that
/// mark while behind the log. Kept by this process from what its probes see: the projector may
/// be another process, and the database holds only where it is, not when it got there.
#[derive(Default)]
struct Progress(Mutex<HashMap<&'static str, (u64, Instant)>>);

impl Progress {
    /// Since when the model has been stuck at `mark` (now, if it moved or was caught up).
    fn stuck_since(&self, name: &'static str, mark: u64, lag: u64, now: Instant) -> Instant {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry(name).or_insert((mark, now));
        if entry.0 != mark || lag == 0 {
            *entry = (mark, now);
        }
        entry.1
    }
}

pub struct Metrics {
    progress: Progress,
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    latency: Family<HttpLabels, Histogram>,
    commands: Family<CommandLabels, Counter>,
    head: Gauge,
    projection_position: Family<ProjectionLabels, Gauge>,
    write_queue: Gauge,
    write_queue_depth: Gauge,
    writes_shed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("quantus");
        let requests = Family::<HttpLabels, Counter>::default();
        let latency = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let commands = Family::<CommandLabels, Counter>::default();
        let head = Gauge::default();
        let projection_position = Family::<ProjectionLabels, Gauge>::default();
        registry.register("http_requests", "HTTP requests served", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        registry.register(
            "commands",
            "Commands that recorded events",
            commands.clone(),
        );
        registry.register(
            "log_head_position",
            "Highest committed log position",
            head.clone(),
        );
        registry.register(
            "projection_position",
            "Log position up to which a read model has seen every event (its high-water mark)",
            projection_position.clone(),
        );
        let write_queue = Gauge::default();
        let write_queue_depth = Gauge::default();
        let writes_shed = Counter::default();
        registry.register(
            "write_queue",
            "Writes admitted to the event writer's queue and not yet answered",
            write_queue.clone(),
        );
        registry.register(
            "write_queue_depth",
            "The write queue's bound (QUANTUS_WRITE_QUEUE_DEPTH)",
            write_queue_depth.clone(),
        );
        registry.register(
            "writes_shed",
            "Writes refused with 503 because the write queue was full or they waited too long",
            writes_shed.clone(),
        );
        Self {
            write_queue,
            write_queue_depth,
            writes_shed,
            progress: Progress::default(),
            registry,
            requests,
            latency,
            commands,
            head,
            projection_position,
        }
    }
}

impl Metrics {
    pub fn command(&self, name: &str) {
        self.commands
            .get_or_create(&CommandLabels {
                command: name.to_owned(),
            })
            .inc();
    }
}

pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(request).await;
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    state.metrics.requests.get_or_create(&labels).inc();
    state
        .metrics
        .latency
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    response
}

pub async fn scrape(State(state): State<AppState>) -> Result<Response, Problem> {
    let queue = state.db.write_queue();
    state.metrics.write_queue.set(queue.in_flight as i64);
    state.metrics.write_queue_depth.set(queue.depth as i64);
    let counted = state.metrics.writes_shed.get();
    state
        .metrics
        .writes_shed
        .inc_by(queue.shed.saturating_sub(counted));
    let head = state.db.head_position().await?;
    state.metrics.head.set(head as i64);
    for model in read_models(&state, head, Instant::now()).await? {
        state
            .metrics
            .projection_position
            .get_or_create(&ProjectionLabels {
                projection: model.name.to_owned(),
            })
            .set(model.mark as i64);
    }
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &state.metrics.registry)
        .map_err(|_| Problem::internal())?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// One read model as readiness sees it.
struct ReadModel {
    name: &'static str,
    mark: u64,
    lag: u64,
    state: &'static str,
}

async fn read_models(
    state: &AppState,
    head: u64,
    now: Instant,
) -> Result<Vec<ReadModel>, quantus_infra::InfraError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT projection, position FROM projection_watermarks")
            .fetch_all(&state.db.pool)
            .await?;
    let marks: HashMap<String, u64> = rows
        .into_iter()
        .map(|(name, p)| (name, u64::try_from(p).unwrap_or_default()))
        .collect();
    let readiness = state.readiness;
    Ok(state
        .read_model_names()
        .into_iter()
        .map(|name| {
            let mark = marks.get(name).copied().unwrap_or(0);
            let lag = head.saturating_sub(mark);
            let since = state.metrics.progress.stuck_since(name, mark, lag, now);
            let state = if lag == 0 {
                "caught-up"
            } else if lag > readiness.max_lag {
                "lagging"
            } else if now.duration_since(since) >= readiness.stall_after {
                "stalled"
            } else {
                "catching-up"
            };
            ReadModel {
                name,
                mark,
                lag,
                state,
            }
        })
        .collect())
}

/// Ready when the database answers and no read model is stalled or lagging (see
/// [`Readiness`]); the body lists every read model's high-water mark and lag either way.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let checked = async {
        let head = state.db.head_position().await?;
        let models = read_models(&state, head, Instant::now()).await?;
        Ok::<_, quantus_infra::InfraError>((head, models))
    };
    let (head, models) = match checked.await {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(%error, "not ready: database unreachable");
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "Not ready",
                "the database is unreachable",
            )
            .into_response();
        }
    };
    let listed: Vec<serde_json::Value> = models
        .iter()
        .map(|m| {
            serde_json::json!({"name": m.name, "position": m.mark, "lag": m.lag, "state": m.state})
        })
        .collect();
    let failing: Vec<String> = models
        .iter()
        .filter(|m| matches!(m.state, "stalled" | "lagging"))
        .map(|m| {
            format!(
                "the {} read model is {} ({} behind position {head})",
                m.name, m.state, m.lag
            )
        })
        .collect();
    if failing.is_empty() {
        return (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready", "head": head, "read_models": listed})),
        )
            .into_response();
    }
    tracing::warn!(reasons = %failing.join("; "), "not ready");
    let problem = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-ready",
        "Not ready",
        failing.join("; "),
    );
    // RFC 9457 extension members: the same listing as when ready.
    let mut body = serde_json::to_value(&problem).unwrap_or_default();
    body["head"] = head.into();
    body["read_models"] = listed.into();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}
