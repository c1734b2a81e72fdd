//! Prometheus metrics and readiness.

use std::time::Instant;

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

pub struct Metrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    latency: Family<HttpLabels, Histogram>,
    commands: Family<CommandLabels, Counter>,
    head: Gauge,
    projection_position: Family<ProjectionLabels, Gauge>,
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
            "Highest log position a read model has applied",
            projection_position.clone(),
        );
        Self {
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
    let head = state.db.head_position().await?;
    state.metrics.head.set(head as i64);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT MAX(position) FROM projection_streams WHERE projection = $1")
            .bind(state.organizations.projection().name())
            .fetch_one(&state.db.pool)
            .await
            .map_err(quantus_infra::InfraError::from)?;
    state
        .metrics
        .projection_position
        .get_or_create(&ProjectionLabels {
            projection: state.organizations.projection().name().to_owned(),
        })
        .set(applied.unwrap_or(0));
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

pub async fn readyz(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(&state.db.pool).await {
        Ok(_) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "not ready: database unreachable");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "Not ready",
                "the database is unreachable",
            )
            .into_response()
        }
    }
}
