//! Prometheus metrics and readiness.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use quantus_commands::observe::{Observer, Outcome};
use quantus_domain::schema::BoundedContext;

use crate::{AppState, Problem};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    context: &'static str,
    aggregate: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AggregateLabels {
    context: &'static str,
    aggregate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectionLabels {
    projection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabels {
    relay: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    grant_type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignInLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScimLabels {
    resource: &'static str,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SamlLabels {
    endpoint: &'static str,
    outcome: &'static str,
}

/// The grant a token request asked for (RFC 6749 §4, RFC 8628); anything else is `other`,
/// so a client cannot grow the label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
    DeviceCode,
    Other,
}

impl Grant {
    const ALL: [Self; 5] = [
        Self::AuthorizationCode,
        Self::RefreshToken,
        Self::ClientCredentials,
        Self::DeviceCode,
        Self::Other,
    ];

    pub fn of(grant_type: Option<&str>) -> Self {
        match grant_type {
            Some("authorization_code") => Self::AuthorizationCode,
            Some("refresh_token") => Self::RefreshToken,
            Some("client_credentials") => Self::ClientCredentials,
            Some("urn:ietf:params:oauth:grant-type:device_code") => Self::DeviceCode,
            _ => Self::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
            Self::DeviceCode => "device_code",
            Self::Other => "other",
        }
    }
}

/// How a person proved who they are on the sign-in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInMethod {
    Password,
    Passkey,
    SecondFactor,
}

impl SignInMethod {
    const ALL: [Self; 3] = [Self::Password, Self::Passkey, Self::SecondFactor];

    fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Passkey => "passkey",
            Self::SecondFactor => "second_factor",
        }
    }
}

const SIGN_IN_OUTCOMES: [&str; 6] = [
    "success",
    "invalid_credentials",
    "locked",
    "second_factor_required",
    "blocked_by_policy",
    "error",
];

/// How one sign-in step ended (one of [`SIGN_IN_OUTCOMES`]).
fn sign_in_outcome<T, E>(
    outcome: &Result<Result<T, quantus_commands::identity::SignInRefusal>, E>,
) -> &'static str {
    use quantus_commands::identity::SignInRefusal;
    match outcome {
        Ok(Ok(_)) => "success",
        Ok(Err(SignInRefusal::Invalid)) => "invalid_credentials",
        Ok(Err(SignInRefusal::Locked(_))) => "locked",
        Ok(Err(SignInRefusal::SecondFactor(_))) => "second_factor_required",
        Ok(Err(SignInRefusal::Blocked(_))) => "blocked_by_policy",
        Err(_) => "error",
    }
}

/// The SCIM resource a route serves (RFC 7644 §3.2), from the route's template.
fn scim_resource(route: &str) -> &'static str {
    let rest = route.trim_start_matches("/scim/v2");
    match rest.trim_start_matches('/').split('/').next() {
        Some("Users") => "Users",
        Some("Groups") => "Groups",
        Some(".search") => "search",
        Some("ServiceProviderConfig") => "ServiceProviderConfig",
        Some("ResourceTypes") => "ResourceTypes",
        Some("Schemas") => "Schemas",
        Some("Bulk") => "Bulk",
        Some("Me") => "Me",
        _ => "other",
    }
}

/// The SAML endpoint a route is (SSO, SLO, metadata), from the route's template.
fn saml_endpoint(route: &str) -> &'static str {
    if route.contains("/sso") {
        "sso"
    } else if route.contains("/slo") {
        "slo"
    } else {
        "metadata"
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn method_name(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        _ => "other",
    }
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
    command_latency: Family<AggregateLabels, Histogram>,
    events_appended: Family<AggregateLabels, Counter>,
    head: Gauge,
    projection_position: Family<ProjectionLabels, Gauge>,
    projection_lag: Family<ProjectionLabels, Gauge>,
    checkpoint_lag: Gauge,
    aggregate_cache: Gauge,
    resident_memory: Gauge,
    anonymous_memory: Gauge,
    loads_from_memory: Counter,
    follower_lag: Gauge,
    pool: Family<PoolLabels, Gauge>,
    write_queue: Gauge,
    write_queue_depth: Gauge,
    writes_shed: Counter,
    projection_lag_seconds: Family<ProjectionLabels, Gauge<f64, AtomicU64>>,
    relay_lag: Family<RelayLabels, Gauge>,
    relay_publish_errors: Counter,
    kafka_lag: Family<ProjectionLabels, Gauge>,
    kafka_lag_errors: Counter,
    token_requests: Family<TokenLabels, Counter>,
    sign_ins: Family<SignInLabels, Counter>,
    scim_requests: Family<ScimLabels, Counter>,
    saml_requests: Family<SamlLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("quantus");
        let requests = Family::<HttpLabels, Counter>::default();
        let latency = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let commands = Family::<CommandLabels, Counter>::default();
        let command_latency = Family::<AggregateLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let events_appended = Family::<AggregateLabels, Counter>::default();
        let head = Gauge::default();
        let projection_position = Family::<ProjectionLabels, Gauge>::default();
        let projection_lag = Family::<ProjectionLabels, Gauge>::default();
        let checkpoint_lag = Gauge::default();
        let aggregate_cache = Gauge::default();
        let resident_memory = Gauge::default();
        let anonymous_memory = Gauge::default();
        let loads_from_memory = Counter::default();
        let follower_lag = Gauge::default();
        let pool = Family::<PoolLabels, Gauge>::default();
        registry.register("http_requests", "HTTP requests served", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        registry.register(
            "commands",
            "Commands by bounded context, aggregate type and how they ended (conflict: another command changed the aggregate first)",
            commands.clone(),
        );
        registry.register(
            "command_duration_seconds",
            "Time from loading the aggregate to the events' commit (or the refusal)",
            command_latency.clone(),
        );
        registry.register(
            "events_appended",
            "Events appended to the log by this process's commands",
            events_appended.clone(),
        );
        registry.register(
            "projection_lag_events",
            "Log positions a read model has still to see (head minus its high-water mark)",
            projection_lag.clone(),
        );
        registry.register(
            "checkpoint_lag_events",
            "Events appended since the latest signed checkpoint's tree",
            checkpoint_lag.clone(),
        );
        registry.register(
            "aggregate_cache_entries",
            "Aggregate states this process keeps in memory",
            aggregate_cache.clone(),
        );
        registry.register(
            "resident_memory_bytes",
            "This process's resident memory (VmRSS)",
            resident_memory.clone(),
        );
        registry.register(
            "anonymous_memory_bytes",
            "Of it, anonymous memory (RssAnon: the heap, what caches and maps hold)",
            anonymous_memory.clone(),
        );
        registry.register(
            "aggregate_loads_from_memory",
            "Hot-path loads (token verification, introspection, keys, clients) answered from memory without reading the store",
            loads_from_memory.clone(),
        );
        registry.register(
            "log_follower_lag_events",
            "Events appended that this process's log follower has not noted yet",
            follower_lag.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database pool connections by state",
            pool.clone(),
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
        let projection_lag_seconds = Family::<ProjectionLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "projection_lag_seconds",
            "Age of the oldest event a read model has still to see (0 when caught up)",
            projection_lag_seconds.clone(),
        );
        let relay_lag = Family::<RelayLabels, Gauge>::default();
        registry.register(
            "relay_lag_events",
            "Events stored but not yet acknowledged by Kafka, per relay (head minus its cursor)",
            relay_lag.clone(),
        );
        let relay_publish_errors = Counter::default();
        registry.register(
            "relay_publish_errors",
            "Failed publication attempts of this process's relay (each is retried)",
            relay_publish_errors.clone(),
        );
        let kafka_lag = Family::<ProjectionLabels, Gauge>::default();
        registry.register(
            "kafka_consumer_lag_messages",
            "Messages on the Kafka partitions a read model's consumer group has not applied (each partition's end minus the model's checkpointed next offset, summed)",
            kafka_lag.clone(),
        );
        let kafka_lag_errors = Counter::default();
        registry.register(
            "kafka_lag_errors",
            "Scrapes that could not read the Kafka consumer lag (the lag series then keep their last value)",
            kafka_lag_errors.clone(),
        );
        let token_requests = Family::<TokenLabels, Counter>::default();
        registry.register(
            "oauth_token_requests",
            "Token endpoint requests by grant type and outcome (issued or refused)",
            token_requests.clone(),
        );
        let sign_ins = Family::<SignInLabels, Counter>::default();
        registry.register(
            "sign_ins",
            "Sign-in steps on the sign-in pages by method and outcome",
            sign_ins.clone(),
        );
        let scim_requests = Family::<ScimLabels, Counter>::default();
        registry.register(
            "scim_requests",
            "SCIM requests by resource, method and status class",
            scim_requests.clone(),
        );
        let saml_requests = Family::<SamlLabels, Counter>::default();
        registry.register(
            "saml_requests",
            "SAML requests by endpoint (sso, slo, metadata) and outcome (answered, refused, failed)",
            saml_requests.clone(),
        );
        // Every pair of these small label sets starts at 0, so that an alert's rate() sees the
        // first failure rather than a series appearing.
        for grant in Grant::ALL {
            for outcome in ["issued", "refused"] {
                drop(token_requests.get_or_create(&TokenLabels {
                    grant_type: grant.as_str(),
                    outcome,
                }));
            }
        }
        for method in SignInMethod::ALL {
            for outcome in SIGN_IN_OUTCOMES {
                drop(sign_ins.get_or_create(&SignInLabels {
                    method: method.as_str(),
                    outcome,
                }));
            }
        }
        Self {
            projection_lag_seconds,
            relay_lag,
            relay_publish_errors,
            kafka_lag,
            kafka_lag_errors,
            token_requests,
            sign_ins,
            scim_requests,
            saml_requests,
            write_queue,
            write_queue_depth,
            writes_shed,
            progress: Progress::default(),
            registry,
            requests,
            latency,
            commands,
            command_latency,
            events_appended,
            head,
            projection_position,
            projection_lag,
            checkpoint_lag,
            aggregate_cache,
            resident_memory,
            anonymous_memory,
            loads_from_memory,
            follower_lag,
            pool,
        }
    }
}

impl Observer for Metrics {
    fn finished(&self, aggregate: &'static str, outcome: Outcome, events: usize, took: Duration) {
        let context = BoundedContext::of_aggregate(aggregate).map_or("unknown", context_name);
        self.commands
            .get_or_create(&CommandLabels {
                context,
                aggregate,
                outcome: outcome.as_str(),
            })
            .inc();
        let labels = AggregateLabels { context, aggregate };
        self.command_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if events > 0 {
            self.events_appended
                .get_or_create(&labels)
                .inc_by(events as u64);
        }
    }
}

impl Metrics {
    /// One answer of the token endpoint: issued when it is a 200.
    pub(crate) fn token_answered(&self, grant: Grant, status: StatusCode) {
        let outcome = if status.is_success() {
            "issued"
        } else {
            "refused"
        };
        self.token_requests
            .get_or_create(&TokenLabels {
                grant_type: grant.as_str(),
                outcome,
            })
            .inc();
    }

    /// One sign-in step as the identity commands decided it.
    pub(crate) fn signed_in<T, E>(
        &self,
        method: SignInMethod,
        outcome: &Result<Result<T, quantus_commands::identity::SignInRefusal>, E>,
    ) {
        self.sign_ins
            .get_or_create(&SignInLabels {
                method: method.as_str(),
                outcome: sign_in_outcome(outcome),
            })
            .inc();
    }

    /// The protocol-level series of SCIM and SAML requests, from the route they matched.
    fn protocol_answered(&self, method: &axum::http::Method, route: &str, status: StatusCode) {
        if route.starts_with("/scim/v2") {
            self.scim_requests
                .get_or_create(&ScimLabels {
                    resource: scim_resource(route),
                    method: method_name(method),
                    status: status_class(status),
                })
                .inc();
        } else if route.starts_with("/saml/") {
            let outcome = if status.is_server_error() {
                "failed"
            } else if status.is_client_error() {
                "refused"
            } else {
                "answered"
            };
            self.saml_requests
                .get_or_create(&SamlLabels {
                    endpoint: saml_endpoint(route),
                    outcome,
                })
                .inc();
        }
    }
}

fn context_name(context: BoundedContext) -> &'static str {
    match context {
        BoundedContext::Identity => "identity",
        BoundedContext::Licensing => "licensing",
        BoundedContext::Evidence => "evidence",
        BoundedContext::Commercial => "commercial",
        BoundedContext::Audit => "audit",
    }
}

pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let http_method = request.method().clone();
    let method = http_method.to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .protocol_answered(&http_method, &route, response.status());
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

/// OpenMetrics when the scraper asks for it (Prometheus does), otherwise the classic
/// Prometheus text format (what `curl` and older tools get).
pub async fn scrape(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let m = &state.metrics;
    let queue = state.db.write_queue();
    m.write_queue.set(queue.in_flight as i64);
    m.write_queue_depth.set(queue.depth as i64);
    let counted = m.writes_shed.get();
    let shed = queue.shed + crate::server::writes_shed();
    m.writes_shed.inc_by(shed.saturating_sub(counted));
    let head = state.db.head_position().await?;
    m.head.set(head as i64);
    let now = chrono::Utc::now();
    for model in read_models(&state, head, Instant::now()).await? {
        let labels = ProjectionLabels {
            projection: model.name.to_owned(),
        };
        // The oldest event the model has still to see: how long it has been waiting.
        let waiting = if model.lag == 0 {
            0.0
        } else {
            quantus_infra::event_store::read_log(&state.db, model.mark, 1)
                .await?
                .first()
                .map_or(0.0, |r| {
                    (now - r.envelope.occurred_at).num_milliseconds().max(0) as f64 / 1000.0
                })
        };
        m.projection_lag_seconds.get_or_create(&labels).set(waiting);
        m.projection_position
            .get_or_create(&labels)
            .set(model.mark as i64);
        m.projection_lag
            .get_or_create(&labels)
            .set(model.lag as i64);
    }
    let checkpointed = state
        .checkpoints
        .latest()
        .await?
        .map_or(0, |c| c.checkpoint.tree_size);
    m.checkpoint_lag
        .set(head.saturating_sub(checkpointed) as i64);
    m.aggregate_cache.set(state.bus.cache().len() as i64);
    if let Some((resident, anonymous)) = quantus_infra::memory::resident() {
        m.resident_memory.set(resident as i64);
        m.anonymous_memory.set(anonymous as i64);
    }
    let follower = state.bus.follower();
    let counted = m.loads_from_memory.get();
    m.loads_from_memory
        .inc_by(follower.served_from_memory().saturating_sub(counted));
    if follower.is_following() {
        m.follower_lag
            .set(head.saturating_sub(follower.position()) as i64);
    }
    for (relay, cursor) in quantus_infra::relay::Relay::cursors(&state.db).await? {
        m.relay_lag
            .get_or_create(&RelayLabels { relay })
            .set(head.saturating_sub(cursor) as i64);
    }
    let failed = m.relay_publish_errors.get();
    m.relay_publish_errors
        .inc_by(quantus_infra::relay::publish_errors().saturating_sub(failed));

    if let Some(ends) = &state.kafka_ends {
        match kafka_lag(&state, ends).await {
            Ok(lags) => {
                for (projection, lag) in lags {
                    m.kafka_lag
                        .get_or_create(&ProjectionLabels {
                            projection: projection.to_owned(),
                        })
                        .set(lag as i64);
                }
            }
            Err(error) => {
                m.kafka_lag_errors.inc();
                tracing::warn!(%error, "Kafka consumer lag not read; exposing the last values");
            }
        }
    }

    let idle = state.db.pool.num_idle() as i64;
    m.pool
        .get_or_create(&PoolLabels { state: "idle" })
        .set(idle);
    m.pool
        .get_or_create(&PoolLabels { state: "in_use" })
        .set(i64::from(state.db.pool.size()) - idle);
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &m.registry)
        .map_err(|_| Problem::internal())?;
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    Ok(if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            classic_text(&body),
        )
            .into_response()
    })
}

/// How long a scrape waits for Kafka to tell the partitions' ends: well under Prometheus's
/// default scrape timeout (10 s), so a broker that is away costs one error, not the scrape.
const KAFKA_LAG_WITHIN: Duration = Duration::from_secs(2);

/// Each read model's Kafka consumer lag: the partitions' ends against the next offsets its
/// checkpoints record. Measured from the database rather than the group's committed offsets:
/// the projectors commit those only as asynchronous hints after a batch, so a lost hint would
/// leave an idle group lagging for ever (docs/DECISIONS.md, "Kafka consumer lag").
async fn kafka_lag(
    state: &AppState,
    ends: &quantus_infra::kafka::PartitionEnds,
) -> Result<Vec<(&'static str, u64)>, quantus_infra::InfraError> {
    let ends = ends.read(KAFKA_LAG_WITHIN).await?;
    let offsets = quantus_projections::runner::kafka_offsets(&state.db).await?;
    let none = HashMap::new();
    Ok(state
        .read_model_names()
        .into_iter()
        .map(|name| {
            let next = offsets.get(name).unwrap_or(&none);
            (name, quantus_infra::kafka::lag_behind(&ends, next))
        })
        .collect())
}

/// OpenMetrics text as the classic Prometheus format: counters' HELP and TYPE lines name the
/// `_total` series, no UNIT lines, no `# EOF`.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
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
    let marks = quantus_projections::runner::watermarks(&state.db).await?;
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
