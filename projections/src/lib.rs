//! Read models and the runner that feeds them from the log.
//!
//! A [`Projection`] is plain code over one SQL transaction; the [`runner`] decides where events
//! come from (the store's own log in the embedded mode, Kafka in production) and guarantees
//! each event's effect happens once: the source position and the per-aggregate sequence are
//! written in the same transaction as the read-model change.

pub mod commercial;
pub mod groups;
pub mod jobs;
pub mod licenses;
pub mod organizations;
pub mod runner;
pub mod users;

use async_trait::async_trait;
use quantus_infra::{InfraError, LogRecord};
use sqlx::AnyConnection;

/// A read model built from the log.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the key of its checkpoints and the argument of `projections rebuild`.
    fn name(&self) -> &'static str;

    /// Whether events of this aggregate type change this model.
    fn handles(&self, aggregate_type: &str) -> bool;

    /// Creates the model's tables if they do not exist.
    async fn create(&self, conn: &mut AnyConnection) -> Result<(), InfraError>;

    /// Empties the model (for a rebuild).
    async fn clear(&self, conn: &mut AnyConnection) -> Result<(), InfraError>;

    /// Applies one event. Called once per (aggregate, sequence), in sequence order.
    async fn apply(&self, conn: &mut AnyConnection, record: &LogRecord) -> Result<(), InfraError>;

    /// Every row of the model in a stable order, for comparing a rebuild with the live model.
    async fn dump(&self, conn: &mut AnyConnection) -> Result<Vec<serde_json::Value>, InfraError>;
}

/// Every read model of the platform. `keys` opens personal data for the users model.
pub fn all(keys: &quantus_infra::subject_keys::SubjectKeys) -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(organizations::OrganizationsView),
        std::sync::Arc::new(licenses::LicensesView),
        std::sync::Arc::new(users::UsersView::new(keys.clone())),
        std::sync::Arc::new(groups::GroupsView),
        std::sync::Arc::new(jobs::JobsView),
        std::sync::Arc::new(commercial::CommercialView),
    ]
}

/// Looks a projection up by name.
pub fn by_name(
    name: &str,
    keys: &quantus_infra::subject_keys::SubjectKeys,
) -> Option<std::sync::Arc<dyn Projection>> {
    all(keys).into_iter().find(|p| p.name() == name)
}
