//! The one configuration loader: flags, then environment, then an optional TOML file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::InfraError;

/// Which pieces of the platform this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// HTTP API only (commands and queries).
    Api,
    /// Outbox relay only: publishes the log to Kafka.
    Relay,
    /// Projection runner only: builds read models from the log.
    Projector,
    /// The Portal alone: its routes and process managers, calling QSA and QuantumLock at
    /// `QUANTUS_QSA_URL` and `QUANTUS_QUANTUMLOCK_URL`.
    Portal,
    /// Everything in one process.
    #[default]
    All,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "api" => Ok(Self::Api),
            "relay" => Ok(Self::Relay),
            "projector" => Ok(Self::Projector),
            "portal" => Ok(Self::Portal),
            "all" => Ok(Self::All),
            other => Err(format!(
                "unknown role {other:?} (api, relay, projector, portal, all)"
            )),
        }
    }
}

impl Role {
    pub fn runs_api(self) -> bool {
        matches!(self, Self::Api | Self::All | Self::Portal)
    }
    /// The Portal's process managers (contract to licences, job usage metering).
    pub fn runs_portal_processes(self) -> bool {
        matches!(self, Self::Portal | Self::All)
    }
    pub fn runs_relay(self) -> bool {
        matches!(self, Self::Relay | Self::All)
    }
    pub fn runs_projector(self) -> bool {
        matches!(self, Self::Projector | Self::All)
    }
}

/// A secret configuration value: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Seals private keys at rest (`QUANTUS_MASTER_KEY`, 32 bytes hex); `None`: a generated
    /// `DATA_DIR/master.key`.
    pub master_key: Option<Secret>,
    /// The public base URL, named as issuer in signed documents.
    pub public_url: String,
    /// Where the embedded store, keys and the bootstrap credential live.
    pub data_dir: PathBuf,
    /// Postgres URL; `None` means the embedded SQLite store under `data_dir`.
    pub database_url: Option<String>,
    /// Kafka bootstrap servers; `None` means the store's own log is read in-process.
    pub kafka_brokers: Option<String>,
    /// Partitions for topics the relay creates.
    pub kafka_partitions: i32,
    /// Prefix of every topic name (for environments sharing a cluster).
    pub kafka_topic_prefix: String,
    /// This process's stable member name in the projector's consumer groups
    /// (`QUANTUS_KAFKA_INSTANCE_ID`, static membership): a restarted projector gets its
    /// partitions back at once. One per process (a StatefulSet's pod name, say); `None`:
    /// dynamic membership, where a crashed member's partitions move after the 10 s session.
    pub kafka_instance_id: Option<String>,
    /// `/readyz` fails when a read model is behind the log and has not advanced for this many
    /// seconds (`QUANTUS_READY_STALL_SECONDS`, default 30)...
    pub ready_stall_seconds: u64,
    /// ...or is more than this many positions behind (`QUANTUS_READY_MAX_LAG`, default
    /// 100000).
    pub ready_max_lag: u64,
    pub listen: String,
    pub role: Role,
    /// Where artifacts go: `s3://bucket[/prefix]` (credentials and endpoint from the usual
    /// `AWS_*` variables), or a folder; `None`: `DATA_DIR/objects` (`OBJECT_STORE_URL`).
    pub object_store_url: Option<String>,
    /// Sign a log checkpoint after this many new events (`QUANTUS_CHECKPOINT_EVENTS`)...
    pub checkpoint_events: u64,
    /// ...or this many seconds after the last one, if anything happened
    /// (`QUANTUS_CHECKPOINT_SECONDS`).
    pub checkpoint_seconds: u64,
    /// Witnesses each new checkpoint goes to (`QUANTUS_WITNESSES`: comma-separated
    /// `<vkey>@<url>`); their cosignatures are kept beside the checkpoints.
    pub witnesses: Vec<crate::witness::WitnessEndpoint>,
    /// How long a witness's newest cosignature stays fresh before the latest checkpoint is
    /// submitted again (`QUANTUS_WITNESS_REFRESH_SECONDS`, default 3600).
    pub witness_refresh_seconds: u64,
    /// How often the retention sweep runs (`QUANTUS_RETENTION_SECONDS`).
    pub retention_seconds: u64,
    /// Aggregate states kept in memory per process (`QUANTUS_AGGREGATE_CACHE`, default 10000).
    pub aggregate_cache: u64,
    /// The allocator's fixed mmap threshold in bytes (`QUANTUS_MALLOC_MMAP_THRESHOLD`, default
    /// 131072; 0: glibc's own adjusting one, which keeps each thread's freed password-hash
    /// memory): see [`crate::memory`].
    pub malloc_mmap_threshold: u64,
    /// How old a state the hot paths (token verification, introspection, keys, client
    /// lookups) may take from memory, in milliseconds (`QUANTUS_READ_STALENESS_MS`, default
    /// 1000; 0: they read the store every time).
    pub read_staleness_ms: u64,
    /// How long before its access token expires a console session refreshes it
    /// (`QUANTUS_CONSOLE_REFRESH_SECONDS`, default 30; a value at least the token's lifetime
    /// refreshes on every page, which the browser tests use to exercise rotation).
    pub console_refresh_seconds: u64,
    /// How long a set-password invite link works (`QUANTUS_INVITE_SECONDS`, default three
    /// days).
    pub invite_seconds: u64,
    /// QSA's issuer URL, whose JWKS the Portal trusts (`QUANTUS_QSA_URL`); `None`: this
    /// process's own public URL.
    pub qsa_url: Option<String>,
    /// QuantumLock's base URL (`QUANTUS_QUANTUMLOCK_URL`); `None`: this process's own.
    pub quantumlock_url: Option<String>,
    /// The Portal's service principal at QSA (`QUANTUS_PORTAL_CLIENT_ID` and
    /// `QUANTUS_PORTAL_CLIENT_SECRET`); `None`: the one bootstrap wrote to
    /// `DATA_DIR/portal-client.json`.
    pub portal_client: Option<(String, Secret)>,
    /// Stripe's secret API key (`STRIPE_SECRET_KEY`); `None`: the built-in billing records.
    pub stripe_secret_key: Option<Secret>,
    /// Stripe's API base URL (`STRIPE_API_BASE`, default `https://api.stripe.com`).
    pub stripe_api_base: String,
    /// The Stripe webhook endpoint's signing secret (`STRIPE_WEBHOOK_SECRET`); without it the
    /// webhook route refuses every call.
    pub stripe_webhook_secret: Option<Secret>,
    /// Bounds on HTTP clients (slow, idle, too many, too large).
    pub http: HttpLimits,
    /// Bounds on the queue in front of the event writer (load shedding):
    /// `QUANTUS_WRITE_QUEUE_DEPTH` (default 64), `QUANTUS_WRITE_QUEUE_TIMEOUT_MS` (2000),
    /// `QUANTUS_WRITE_RETRY_AFTER_SECONDS` (1).
    pub write: crate::group_commit::WriteLimits,
    /// The pause after a licence step's first failed attempt
    /// (`QUANTUS_LICENSE_RETRY_FIRST_SECONDS`, default 2); it doubles with each attempt.
    pub license_retry_first_seconds: u64,
    /// The longest pause between attempts at a pending licence step
    /// (`QUANTUS_LICENSE_RETRY_MAX_SECONDS`, default 300).
    pub license_retry_max_seconds: u64,
}

/// Bounds on what one HTTP client may hold, send or have remembered. Each has an environment variable and a
/// default sized for real clients on slow links, not for attackers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From when the server waits for a request (a new connection, or the next request on a
    /// kept-alive one) until its whole head has arrived (`QUANTUS_HEADER_READ_TIMEOUT_SECONDS`,
    /// default 10). Partial headers and idle kept-alive connections end here.
    pub header_read_timeout_seconds: u64,
    /// The longest a request body may keep the server waiting for its next bytes, and the
    /// grace period before `min_body_bytes_per_second` applies
    /// (`QUANTUS_BODY_READ_TIMEOUT_SECONDS`, default 10).
    pub body_read_timeout_seconds: u64,
    /// The slowest average a body may arrive at, over the time the server waited for it
    /// (`QUANTUS_MIN_BODY_BYTES_PER_SECOND`, default 256): a trickle is cut off.
    pub min_body_bytes_per_second: u64,
    /// The longest a client may leave a response unread (no byte accepted while the server
    /// has bytes to send) (`QUANTUS_IDLE_TIMEOUT_SECONDS`, default 60).
    pub idle_timeout_seconds: u64,
    /// Connections served at once; more are shed (`QUANTUS_MAX_CONNECTIONS`, default 1024).
    pub max_connections: u64,
    /// Connections past `max_connections` accepted at once only to be answered 503 with
    /// `Retry-After` and closed; past both caps connections wait in the listen backlog
    /// (`QUANTUS_SHED_CONNECTIONS`, default 1024; 0 leaves every one past the cap waiting).
    pub shed_connections: u64,
    /// The `Retry-After` of a shed connection: the one a shed write gets
    /// (`QUANTUS_WRITE_RETRY_AFTER_SECONDS`, default 1).
    pub retry_after_seconds: u64,
    /// Write requests (an unsafe method, but for `/oauth2/`) served at once; one more is
    /// answered 503 with `Retry-After` before any work, not even authentication
    /// (`QUANTUS_WRITE_QUEUE_DEPTH`, default 64: the write queue's depth).
    pub write_requests: u64,
    /// Largest request body but for artifact uploads (`QUANTUS_MAX_BODY_BYTES`, default 2 MiB).
    pub max_body_bytes: u64,
    /// Largest artifact upload (`QUANTUS_MAX_ARTIFACT_BYTES`, default and ceiling 10 GiB).
    pub max_artifact_bytes: u64,
    /// Largest evidence archive `POST /v1/evidence/verify` takes; it is checked in memory
    /// (`QUANTUS_MAX_ARCHIVE_BYTES`, default 256 MiB; the CLI has no limit).
    pub max_archive_bytes: u64,
    /// How long an `Idempotency-Key` and its answer are kept
    /// (`QUANTUS_IDEMPOTENCY_KEY_SECONDS`, default one day).
    pub idempotency_key_seconds: u64,
}

impl HttpLimits {
    /// The ceiling of `max_artifact_bytes`: what the evidence service accepts at most.
    pub const ARTIFACT_CEILING: u64 = 10 * 1024 * 1024 * 1024;
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 10,
            min_body_bytes_per_second: 256,
            idle_timeout_seconds: 60,
            max_connections: 1024,
            shed_connections: 1024,
            retry_after_seconds: 1,
            write_requests: 64,
            max_body_bytes: 2 * 1024 * 1024,
            max_artifact_bytes: Self::ARTIFACT_CEILING,
            max_archive_bytes: 256 * 1024 * 1024,
            idempotency_key_seconds: 86400,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    kafka_brokers: Option<String>,
    kafka_partitions: Option<i32>,
    kafka_topic_prefix: Option<String>,
    kafka_instance_id: Option<String>,
    listen: Option<String>,
    public_url: Option<String>,
}

/// Values given on the command line; each wins over the environment and the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub role: Option<Role>,
    pub database_url: Option<String>,
    pub kafka_brokers: Option<String>,
}

impl Config {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    pub const DEFAULT_DATA_DIR: &'static str = "./quantus-data";

    /// Loads from `overrides`, then the process environment, then the config file.
    pub fn load(overrides: Overrides) -> Result<Self, InfraError> {
        Self::load_from(overrides, |k| {
            std::env::var(k).ok().filter(|v| !v.is_empty())
        })
    }

    /// As [`Config::load`], with the environment given as a function (testable).
    pub fn load_from(
        overrides: Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, InfraError> {
        let file_path = overrides
            .config_file
            .clone()
            .or_else(|| env("QUANTUS_CONFIG").map(PathBuf::from));
        let file = match &file_path {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let partitions = match env("QUANTUS_KAFKA_PARTITIONS") {
            Some(v) => v.parse().map_err(|_| {
                InfraError::Config(format!("QUANTUS_KAFKA_PARTITIONS={v:?} is not a number"))
            })?,
            None => file.kafka_partitions.unwrap_or(3),
        };
        if partitions < 1 {
            return Err(InfraError::Config(
                "kafka_partitions must be at least 1".into(),
            ));
        }
        let number = |name: &str, default: u64| -> Result<u64, InfraError> {
            match env(name) {
                Some(v) => v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    InfraError::Config(format!("{name}={v:?} is not a positive number"))
                }),
                None => Ok(default),
            }
        };
        // For a limit where 0 means "none of this".
        let number_or_zero = |name: &str, default: u64| -> Result<u64, InfraError> {
            match env(name) {
                Some(v) => v.parse::<u64>().map_err(|_| {
                    InfraError::Config(format!("{name}={v:?} is not a number (0 or more)"))
                }),
                None => Ok(default),
            }
        };
        let checkpoint_events = number("QUANTUS_CHECKPOINT_EVENTS", 1000)?;
        let checkpoint_seconds = number("QUANTUS_CHECKPOINT_SECONDS", 60)?;
        let retention_seconds = number("QUANTUS_RETENTION_SECONDS", 3600)?;
        let witness_refresh_seconds = number("QUANTUS_WITNESS_REFRESH_SECONDS", 3600)?;
        let witnesses = env("QUANTUS_WITNESSES")
            .unwrap_or_default()
            .split(',')
            .filter(|w| !w.trim().is_empty())
            .map(crate::witness::WitnessEndpoint::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let aggregate_cache = number("QUANTUS_AGGREGATE_CACHE", 10_000)?;
        if aggregate_cache > 10_000_000 {
            return Err(InfraError::Config(
                "QUANTUS_AGGREGATE_CACHE must be at most 10000000".into(),
            ));
        }
        let malloc_mmap_threshold = number_or_zero(
            "QUANTUS_MALLOC_MMAP_THRESHOLD",
            crate::memory::DEFAULT_MMAP_THRESHOLD,
        )?;
        // glibc refuses more than half its largest heap (32 MiB on 64-bit).
        if malloc_mmap_threshold > 32 * 1024 * 1024 {
            return Err(InfraError::Config(
                "QUANTUS_MALLOC_MMAP_THRESHOLD must be at most 33554432 (32 MiB)".into(),
            ));
        }
        let read_staleness_ms = number("QUANTUS_READ_STALENESS_MS", 1000)?;
        if read_staleness_ms > 60_000 {
            return Err(InfraError::Config(
                "QUANTUS_READ_STALENESS_MS must be at most 60000 (a revoked token must stop working soon)".into(),
            ));
        }
        let invite_seconds = number("QUANTUS_INVITE_SECONDS", 3 * 86400)?;
        let defaults = HttpLimits::default();
        let http = HttpLimits {
            header_read_timeout_seconds: number(
                "QUANTUS_HEADER_READ_TIMEOUT_SECONDS",
                defaults.header_read_timeout_seconds,
            )?,
            body_read_timeout_seconds: number(
                "QUANTUS_BODY_READ_TIMEOUT_SECONDS",
                defaults.body_read_timeout_seconds,
            )?,
            min_body_bytes_per_second: number(
                "QUANTUS_MIN_BODY_BYTES_PER_SECOND",
                defaults.min_body_bytes_per_second,
            )?,
            idle_timeout_seconds: number(
                "QUANTUS_IDLE_TIMEOUT_SECONDS",
                defaults.idle_timeout_seconds,
            )?,
            max_connections: number("QUANTUS_MAX_CONNECTIONS", defaults.max_connections)?,
            shed_connections: number_or_zero(
                "QUANTUS_SHED_CONNECTIONS",
                defaults.shed_connections,
            )?,
            retry_after_seconds: number(
                "QUANTUS_WRITE_RETRY_AFTER_SECONDS",
                defaults.retry_after_seconds,
            )?,
            write_requests: number("QUANTUS_WRITE_QUEUE_DEPTH", defaults.write_requests)?,
            max_body_bytes: number("QUANTUS_MAX_BODY_BYTES", defaults.max_body_bytes)?,
            max_artifact_bytes: number("QUANTUS_MAX_ARTIFACT_BYTES", defaults.max_artifact_bytes)?,
            max_archive_bytes: number("QUANTUS_MAX_ARCHIVE_BYTES", defaults.max_archive_bytes)?,
            idempotency_key_seconds: number(
                "QUANTUS_IDEMPOTENCY_KEY_SECONDS",
                defaults.idempotency_key_seconds,
            )?,
        };
        if http.max_artifact_bytes > HttpLimits::ARTIFACT_CEILING {
            return Err(InfraError::Config(format!(
                "QUANTUS_MAX_ARTIFACT_BYTES must be at most {}",
                HttpLimits::ARTIFACT_CEILING
            )));
        }
        // Tokio's semaphore holds at most usize::MAX >> 3 permits; no server needs more.
        if http.max_connections > 1 << 20 {
            return Err(InfraError::Config(
                "QUANTUS_MAX_CONNECTIONS must be at most 1048576".into(),
            ));
        }
        if http.shed_connections > 1 << 20 {
            return Err(InfraError::Config(
                "QUANTUS_SHED_CONNECTIONS must be at most 1048576".into(),
            ));
        }
        let write_defaults = crate::group_commit::WriteLimits::default();
        let write = crate::group_commit::WriteLimits {
            queue_depth: usize::try_from(number(
                "QUANTUS_WRITE_QUEUE_DEPTH",
                write_defaults.queue_depth as u64,
            )?)
            .unwrap_or(usize::MAX),
            queue_timeout: std::time::Duration::from_millis(number(
                "QUANTUS_WRITE_QUEUE_TIMEOUT_MS",
                write_defaults.queue_timeout.as_millis() as u64,
            )?),
            retry_after: std::time::Duration::from_secs(number(
                "QUANTUS_WRITE_RETRY_AFTER_SECONDS",
                write_defaults.retry_after.as_secs(),
            )?),
        };
        if write.queue_depth > crate::group_commit::WriteLimits::MAX_DEPTH {
            return Err(InfraError::Config(format!(
                "QUANTUS_WRITE_QUEUE_DEPTH must be at most {}",
                crate::group_commit::WriteLimits::MAX_DEPTH
            )));
        }
        let ready_stall_seconds = number("QUANTUS_READY_STALL_SECONDS", 30)?;
        let license_retry_first_seconds = number("QUANTUS_LICENSE_RETRY_FIRST_SECONDS", 2)?;
        let license_retry_max_seconds = number("QUANTUS_LICENSE_RETRY_MAX_SECONDS", 300)?;
        let ready_max_lag = number("QUANTUS_READY_MAX_LAG", 100_000)?;
        let console_refresh_seconds = number("QUANTUS_CONSOLE_REFRESH_SECONDS", 30)?;
        let listen = overrides
            .listen
            .clone()
            .or_else(|| env("QUANTUS_LISTEN"))
            .or(file.listen.clone())
            .unwrap_or_else(|| Self::DEFAULT_LISTEN.to_owned());
        Ok(Self {
            master_key: env("QUANTUS_MASTER_KEY").map(Secret),
            public_url: env("QUANTUS_PUBLIC_URL")
                .or(file.public_url)
                .unwrap_or_else(|| format!("http://{listen}")),
            data_dir: overrides
                .data_dir
                .or_else(|| env("QUANTUS_DATA_DIR").map(PathBuf::from))
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(Self::DEFAULT_DATA_DIR)),
            database_url: overrides
                .database_url
                .or_else(|| env("DATABASE_URL"))
                .or(file.database_url),
            kafka_brokers: overrides
                .kafka_brokers
                .or_else(|| env("KAFKA_BROKERS"))
                .or(file.kafka_brokers),
            kafka_partitions: partitions,
            kafka_topic_prefix: env("QUANTUS_KAFKA_TOPIC_PREFIX")
                .or(file.kafka_topic_prefix)
                .unwrap_or_default(),
            kafka_instance_id: env("QUANTUS_KAFKA_INSTANCE_ID").or(file.kafka_instance_id),
            ready_stall_seconds,
            ready_max_lag,
            listen,
            role: overrides.role.unwrap_or_default(),
            checkpoint_events,
            checkpoint_seconds,
            witnesses,
            witness_refresh_seconds,
            retention_seconds,
            aggregate_cache,
            malloc_mmap_threshold,
            read_staleness_ms,
            console_refresh_seconds,
            invite_seconds,
            object_store_url: env("OBJECT_STORE_URL"),
            qsa_url: env("QUANTUS_QSA_URL").map(|u| u.trim_end_matches('/').to_owned()),
            quantumlock_url: env("QUANTUS_QUANTUMLOCK_URL")
                .map(|u| u.trim_end_matches('/').to_owned()),
            portal_client: match (
                env("QUANTUS_PORTAL_CLIENT_ID"),
                env("QUANTUS_PORTAL_CLIENT_SECRET"),
            ) {
                (Some(id), Some(secret)) => Some((id, Secret(secret))),
                (None, None) => None,
                _ => {
                    return Err(InfraError::Config(
                        "set both QUANTUS_PORTAL_CLIENT_ID and QUANTUS_PORTAL_CLIENT_SECRET, or neither"
                            .into(),
                    ))
                }
            },
            stripe_secret_key: env("STRIPE_SECRET_KEY").map(Secret),
            stripe_api_base: env("STRIPE_API_BASE")
                .unwrap_or_else(|| "https://api.stripe.com".to_owned()),
            stripe_webhook_secret: env("STRIPE_WEBHOOK_SECRET").map(Secret),
            http,
            write,
            license_retry_first_seconds,
            license_retry_max_seconds,
        })
    }

    /// Kafka settings, when Kafka is configured.
    pub fn kafka(&self) -> Option<crate::kafka::KafkaSettings> {
        self.kafka_brokers
            .as_ref()
            .map(|brokers| crate::kafka::KafkaSettings {
                brokers: brokers.clone(),
                partitions: self.kafka_partitions,
                topic_prefix: self.kafka_topic_prefix.clone(),
                instance_id: self.kafka_instance_id.clone(),
            })
    }

    /// Whether this process uses the embedded SQLite store.
    pub fn is_embedded(&self) -> bool {
        self.database_url.is_none()
    }
}

fn read_file(path: &Path) -> Result<FileConfig, InfraError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InfraError::Config(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| InfraError::Config(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn no_configuration_means_the_embedded_default() {
        let c = Config::load_from(Overrides::default(), |_| None).unwrap();
        assert!(c.is_embedded());
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./quantus-data"));
        assert_eq!(c.kafka_brokers, None);
        assert_eq!(c.role, Role::All);
    }

    #[test]
    fn flags_win_over_environment_which_wins_over_the_file() {
        let dir = std::env::temp_dir().join(format!("quantus-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("quantus.toml");
        std::fs::write(&file, "database_url = \"postgres://file\"\nkafka_brokers = \"file:9092\"\nlisten = \"0.0.0.0:1\"\n").unwrap();
        let env: HashMap<&str, &str> = [("KAFKA_BROKERS", "env:9092")].into();
        let c = Config::load_from(
            Overrides {
                config_file: Some(file),
                listen: Some("127.0.0.1:9".into()),
                ..Default::default()
            },
            |k| env.get(k).map(|v| v.to_string()),
        )
        .unwrap();
        assert_eq!(c.database_url.as_deref(), Some("postgres://file"));
        assert_eq!(c.kafka_brokers.as_deref(), Some("env:9092"));
        assert_eq!(c.listen, "127.0.0.1:9");
    }

    #[test]
    fn http_limits_have_defaults_and_come_from_the_environment() {
        let c = Config::load_from(Overrides::default(), |_| None).unwrap();
        assert_eq!(c.http, HttpLimits::default());
        assert_eq!(c.http.max_body_bytes, 2 * 1024 * 1024);
        let env: HashMap<&str, &str> = [
            ("QUANTUS_HEADER_READ_TIMEOUT_SECONDS", "3"),
            ("QUANTUS_BODY_READ_TIMEOUT_SECONDS", "4"),
            ("QUANTUS_MIN_BODY_BYTES_PER_SECOND", "1000"),
            ("QUANTUS_IDLE_TIMEOUT_SECONDS", "5"),
            ("QUANTUS_MAX_CONNECTIONS", "6"),
            ("QUANTUS_SHED_CONNECTIONS", "0"),
            ("QUANTUS_WRITE_RETRY_AFTER_SECONDS", "11"),
            ("QUANTUS_WRITE_QUEUE_DEPTH", "12"),
            ("QUANTUS_MAX_BODY_BYTES", "7"),
            ("QUANTUS_MAX_ARTIFACT_BYTES", "8"),
            ("QUANTUS_MAX_ARCHIVE_BYTES", "10"),
            ("QUANTUS_IDEMPOTENCY_KEY_SECONDS", "9"),
        ]
        .into();
        let c =
            Config::load_from(Overrides::default(), |k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(
            c.http,
            HttpLimits {
                header_read_timeout_seconds: 3,
                body_read_timeout_seconds: 4,
                min_body_bytes_per_second: 1000,
                idle_timeout_seconds: 5,
                max_connections: 6,
                shed_connections: 0,
                retry_after_seconds: 11,
                write_requests: 12,
                max_body_bytes: 7,
                max_artifact_bytes: 8,
                max_archive_bytes: 10,
                idempotency_key_seconds: 9,
            }
        );
        for (name, value) in [
            ("QUANTUS_MAX_CONNECTIONS", "0"),
            ("QUANTUS_SHED_CONNECTIONS", "-1"),
            ("QUANTUS_SHED_CONNECTIONS", "1048577"),
            ("QUANTUS_HEADER_READ_TIMEOUT_SECONDS", "soon"),
            ("QUANTUS_MAX_ARTIFACT_BYTES", "10737418241"),
        ] {
            let err = Config::load_from(Overrides::default(), |k| {
                (k == name).then(|| value.to_owned())
            })
            .unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn write_queue_limits_have_defaults_and_come_from_the_environment() {
        use crate::group_commit::WriteLimits;
        use std::time::Duration;
        let c = Config::load_from(Overrides::default(), |_| None).unwrap();
        assert_eq!(c.write, WriteLimits::default());
        let env: HashMap<&str, &str> = [
            ("QUANTUS_WRITE_QUEUE_DEPTH", "12"),
            ("QUANTUS_WRITE_QUEUE_TIMEOUT_MS", "345"),
            ("QUANTUS_WRITE_RETRY_AFTER_SECONDS", "6"),
        ]
        .into();
        let c =
            Config::load_from(Overrides::default(), |k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(
            c.write,
            WriteLimits {
                queue_depth: 12,
                queue_timeout: Duration::from_millis(345),
                retry_after: Duration::from_secs(6),
            }
        );
        for (name, value) in [
            ("QUANTUS_WRITE_QUEUE_DEPTH", "0"),
            ("QUANTUS_WRITE_QUEUE_DEPTH", "1048577"),
            ("QUANTUS_WRITE_QUEUE_TIMEOUT_MS", "soon"),
        ] {
            let err = Config::load_from(Overrides::default(), |k| {
                (k == name).then(|| value.to_owned())
            })
            .unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn the_mmap_threshold_has_a_default_and_a_limit() {
        let c = Config::load_from(Overrides::default(), |_| None).unwrap();
        assert_eq!(c.malloc_mmap_threshold, 128 * 1024);
        let c = Config::load_from(Overrides::default(), |k| {
            (k == "QUANTUS_MALLOC_MMAP_THRESHOLD").then(|| "0".to_owned())
        })
        .unwrap();
        assert_eq!(c.malloc_mmap_threshold, 0);
        for value in ["33554433", "big"] {
            let err = Config::load_from(Overrides::default(), |k| {
                (k == "QUANTUS_MALLOC_MMAP_THRESHOLD").then(|| value.to_owned())
            })
            .unwrap_err();
            assert!(
                err.to_string().contains("QUANTUS_MALLOC_MMAP_THRESHOLD"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn a_bad_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("quantus-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "databse_url = 1\n").unwrap();
        let err = Config::load_from(
            Overrides {
                config_file: Some(file),
                ..Default::default()
            },
            |_| None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("databse_url"), "{err}");
    }
}
