//! `quantus`: one thin binary over the workspace crates.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let traces = match init_logging(args.log_format) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("error: trace export: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let code = match cli::run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    };
    if let Some(provider) = traces {
        // The batch still queued goes out before the process ends; the exporter's blocking
        // HTTP client must not run on a runtime thread.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = flushed {
            eprintln!("warning: trace export: the last spans were not sent: {error}");
        }
    }
    code
}

/// The target of spans made only for trace export (the command, the append, the relay's
/// publish, a projection's apply): the log leaves them out, so a logged line keeps naming its
/// request span and request id.
const TRACE_TARGET: &str = quantus_infra::telemetry::TRACE_TARGET;

/// Logs to stderr, filtered by `RUST_LOG` (or the older `QUANTUS_LOG`), as text (coloured
/// only on a terminal) or as one JSON object per line; with `OTEL_EXPORTER_OTLP_ENDPOINT` set,
/// also exports the spans (the returned provider is shut down on exit, flushing them).
fn init_logging(
    format: cli::LogFormat,
) -> Result<
    Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    opentelemetry_otlp::ExporterBuildError,
> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = ["RUST_LOG", "QUANTUS_LOG"]
        .into_iter()
        .find_map(|var| tracing_subscriber::EnvFilter::try_from_env(var).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info,sqlx=warn,rdkafka=warn"));
    let log_filter = tracing_subscriber::filter::FilterExt::and(
        filter,
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::TRACE)
            .with_target(TRACE_TARGET, tracing_subscriber::filter::LevelFilter::OFF),
    );
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = match format {
        cli::LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(log_filter)
            .boxed(),
        cli::LogFormat::Text => log
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(log_filter)
            .boxed(),
    };
    let (provider, export) = match trace_export()? {
        Some(provider) => {
            use opentelemetry::trace::TracerProvider as _;
            // Spans only (events stay in the log), at info and above: the request, the
            // command, the append.
            // `sometimes`, not `always`, for the spans exported: per-layer filters pass their
            // decision from `enabled()` to the span through a thread-local, and a call site
            // cached as `always` skips `enabled()`, so the span read what an unrelated check
            // left there (sqlx's statement logger on Postgres) and was dropped by every layer
            // (tokio-rs/tracing#2519).
            let exported = |meta: &tracing::Metadata<'_>| {
                meta.is_span() && *meta.level() <= tracing::Level::INFO
            };
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("quantus"))
                .with_filter(
                    tracing_subscriber::filter::dynamic_filter_fn(move |meta, _| exported(meta))
                        .with_callsite_filter(move |meta| {
                            if exported(meta) {
                                tracing::subscriber::Interest::sometimes()
                            } else {
                                tracing::subscriber::Interest::never()
                            }
                        }),
                );
            // The trace goes on through the store and Kafka to the projections.
            quantus_infra::telemetry::enable();
            (Some(provider), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(log).with(export).init();
    Ok(provider)
}

/// The OTLP/HTTP trace exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` names a receiver (the
/// exporter reads it, and the other standard `OTEL_EXPORTER_OTLP_*`/`OTEL_BSP_*` settings);
/// none otherwise, so the default costs nothing.
fn trace_export() -> Result<
    Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    opentelemetry_otlp::ExporterBuildError,
> {
    use opentelemetry_otlp::WithExportConfig as _;
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    if endpoint.trim().is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "quantus".to_owned());
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .build(),
    ))
}
