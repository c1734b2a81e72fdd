/// The one error type of the infrastructure layer.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("object storage: {0}")]
    Storage(String),
    /// A peer service (a witness) did not answer.
    #[error("unreachable: {0}")]
    Unreachable(String),
}
