use std::sync::Arc;

use quantus_commands::CommandBus;
use quantus_infra::{Database, SqlEventRepository};
use quantus_projections::runner::ProjectionRunner;

use crate::metrics::Metrics;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub bus: CommandBus,
    pub organizations: ProjectionRunner,
    pub(crate) token_hashes: Arc<Vec<[u8; 32]>>,
    pub(crate) metrics: Arc<Metrics>,
}

impl AppState {
    /// `token_hashes` are the bootstrap credential hashes loaded from the store.
    pub fn new(db: Database, token_hashes: Vec<[u8; 32]>) -> Self {
        let repo = SqlEventRepository::new(db.clone());
        let organizations = ProjectionRunner::new(
            db.clone(),
            Arc::new(quantus_projections::organizations::OrganizationsView),
        );
        Self {
            bus: CommandBus::new(repo),
            organizations,
            db,
            token_hashes: Arc::new(token_hashes),
            metrics: Arc::new(Metrics::default()),
        }
    }
}
