//! Trace context across the log: a write's trace goes on through the store and Kafka to the
//! projections (HTTP -> command -> append -> relay publish -> projection apply).
//!
//! The append records the W3C `traceparent` of its span beside the events, in
//! `event_trace_context` (keyed by position; never in the events row, so hashes, checkpoints
//! and the audit format do not change). The relay's publish span is a child of it and travels
//! on the Kafka message as a `traceparent` header; a projector's apply span is a child of that
//! header (or, from the store's own log, of the append).
//!
//! Everything here is off unless trace export is on ([`enable`], called by the binary when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set): then no row is written, no header sent, no span made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{Database, InfraError};

/// The W3C trace-context header (and the key the propagator writes).
pub const TRACEPARENT: &str = "traceparent";

/// The target of spans made only for trace export: the log leaves them out.
pub const TRACE_TARGET: &str = "quantus::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns trace propagation on for this process (once spans are exported).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are exported, so trace context is worth carrying.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The `traceparent` of `span`, when it belongs to a sampled, valid trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` (just created, not yet entered) a child of the span `traceparent` names. A
/// value that is not a valid W3C `traceparent` leaves it a root: a broken header must not
/// cost the event.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let carrier: HashMap<String, String> =
        HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The recorded trace context of the events in positions `(after, upto]`, by position. Empty,
/// without a query, when propagation is off.
pub async fn trace_contexts(
    db: &Database,
    after: u64,
    upto: u64,
) -> Result<HashMap<u64, String>, InfraError> {
    if !enabled() || upto <= after {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT position, traceparent FROM event_trace_context WHERE position > $1 AND position <= $2",
    )
    .bind(i64::try_from(after).unwrap_or(i64::MAX))
    .bind(i64::try_from(upto).unwrap_or(i64::MAX))
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(p, tp)| Some((u64::try_from(p).ok()?, tp)))
        .collect())
}
