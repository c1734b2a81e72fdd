//! Read-your-writes: a query may name a log position and wait (bounded) until the read model
//! it reads has seen it and every position before it (its high-water mark; see
//! `docs/event-log.md`, "Consuming the log").

use std::time::Duration;

use axum::http::StatusCode;
use quantus_projections::runner::ProjectionRunner;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::Problem;

/// Default and largest wait a client may ask for.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
pub const MAX_WAIT_MS: u64 = 30_000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    /// Wait until the read model has seen every event up to this log position (from a command
    /// response).
    pub min_position: Option<u64>,
    /// How long to wait, in milliseconds (default 5000, at most 30000); past it: 503 with
    /// `Retry-After`.
    pub wait_ms: Option<u64>,
}

impl Consistency {
    pub async fn wait(&self, runner: &ProjectionRunner) -> Result<(), Problem> {
        let Some(position) = self.min_position else {
            return Ok(());
        };
        let wait = match self.wait_ms {
            Some(ms) if ms > MAX_WAIT_MS => {
                return Err(Problem::bad_request(format!(
                    "wait_ms must be at most {MAX_WAIT_MS}"
                )))
            }
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_WAIT,
        };
        // Positions are stored as signed 64-bit integers; a larger one can never exist, and
        // waiting for it would only end in a misleading 503.
        if i64::try_from(position).is_err() {
            return Err(Problem::bad_request(format!(
                "min_position must be at most {}",
                i64::MAX
            )));
        }
        // Position 0 precedes the first event: every model has always applied it.
        if position == 0 {
            return Ok(());
        }
        if runner.has_applied(position).await? {
            return Ok(());
        }
        // A position no write has reached yet came from no command response: waiting for it
        // is a client's mistake, not the service's delay.
        let head = runner.log_head().await?;
        if position > head {
            return Err(Problem::bad_request(format!(
                "min_position {position} is past the end of the log (position {head})"
            )));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if runner.has_applied(position).await? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                // The write happened; the model will show it shortly: retry, as after any 503.
                return Err(Problem {
                    retry_after: Some(1),
                    ..Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "consistency-timeout",
                        "Read model not caught up",
                        format!(
                            "the {} read model had not applied log position {position} after {} ms; retry later",
                            runner.projection().name(),
                            wait.as_millis()
                        ),
                    )
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
