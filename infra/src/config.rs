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
    /// How often the retention sweep runs (`QUANTUS_RETENTION_SECONDS`).
    pub retention_seconds: u64,
    /// How long before its access token expires a console session refreshes it
    /// (`QUANTUS_CONSOLE_REFRESH_SECONDS`, default 30; a value at least the token's lifetime
    /// refreshes on every page, which the browser tests use to exercise rotation).
    pub console_refresh_seconds: u64,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    kafka_brokers: Option<String>,
    kafka_partitions: Option<i32>,
    kafka_topic_prefix: Option<String>,
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
        let checkpoint_events = number("QUANTUS_CHECKPOINT_EVENTS", 1000)?;
        let checkpoint_seconds = number("QUANTUS_CHECKPOINT_SECONDS", 60)?;
        let retention_seconds = number("QUANTUS_RETENTION_SECONDS", 3600)?;
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
            listen,
            role: overrides.role.unwrap_or_default(),
            checkpoint_events,
            checkpoint_seconds,
            retention_seconds,
            console_refresh_seconds,
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
