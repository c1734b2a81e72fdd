use std::sync::Arc;

use quantus_commands::licensing::Licensing;
use quantus_commands::CommandBus;
use quantus_infra::keystore::Keystore;
use quantus_infra::{Database, SqlEventRepository};
use quantus_projections::runner::ProjectionRunner;

use crate::metrics::Metrics;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub bus: CommandBus,
    pub organizations: ProjectionRunner,
    pub licenses: ProjectionRunner,
    pub licensing: Licensing,
    /// The public base URL, named as issuer in signed documents.
    pub issuer: String,
    pub(crate) token_hashes: Arc<Vec<[u8; 32]>>,
    pub(crate) metrics: Arc<Metrics>,
}

impl AppState {
    /// `token_hashes` are the bootstrap credential hashes loaded from the store.
    pub fn new(
        db: Database,
        token_hashes: Vec<[u8; 32]>,
        keystore: Arc<dyn Keystore>,
        issuer: String,
    ) -> Self {
        let repo = SqlEventRepository::new(db.clone());
        let organizations = ProjectionRunner::new(
            db.clone(),
            Arc::new(quantus_projections::organizations::OrganizationsView),
        );
        let bus = CommandBus::new(repo);
        Self {
            licenses: ProjectionRunner::new(
                db.clone(),
                Arc::new(quantus_projections::licenses::LicensesView),
            ),
            licensing: Licensing::new(bus.clone(), keystore, issuer.clone()),
            issuer,
            bus,
            organizations,
            db,
            token_hashes: Arc::new(token_hashes),
            metrics: Arc::new(Metrics::default()),
        }
    }
}
