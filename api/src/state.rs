use std::sync::Arc;

use quantus_commands::checkpoints::Checkpoints;
use quantus_commands::evidence::Evidence;
use quantus_commands::identity::Identity;
use quantus_commands::licensing::Licensing;
use quantus_commands::CommandBus;
use quantus_infra::keystore::Keystore;
use quantus_infra::objects::ObjectStorage;
use quantus_infra::subject_keys::{SignInThrottle, SubjectKeys};
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
    pub users: ProjectionRunner,
    pub jobs: ProjectionRunner,
    pub licensing: Licensing,
    pub identity: Identity,
    pub checkpoints: Checkpoints,
    pub evidence: Evidence,
    /// The public base URL: the OIDC issuer, and the issuer named in signed documents.
    pub issuer: String,
    pub(crate) metrics: Arc<Metrics>,
}

impl AppState {
    /// `master_key` unwraps the per-subject data keys (the same key seals the keystore).
    pub fn new(
        db: Database,
        keystore: Arc<dyn Keystore>,
        master_key: &[u8; 32],
        objects: ObjectStorage,
        issuer: String,
    ) -> Self {
        let repo = SqlEventRepository::new(db.clone());
        let bus = CommandBus::new(repo);
        let licensing = Licensing::new(bus.clone(), keystore, issuer.clone());
        let keys = SubjectKeys::new(db.clone(), master_key);
        let identity = Identity::new(
            bus.clone(),
            licensing.clone(),
            keys.clone(),
            SignInThrottle::new(db.clone()),
            issuer.clone(),
        );
        Self {
            organizations: ProjectionRunner::new(
                db.clone(),
                Arc::new(quantus_projections::organizations::OrganizationsView),
            ),
            licenses: ProjectionRunner::new(
                db.clone(),
                Arc::new(quantus_projections::licenses::LicensesView),
            ),
            users: ProjectionRunner::new(
                db.clone(),
                Arc::new(quantus_projections::users::UsersView::new(keys)),
            ),
            checkpoints: Checkpoints::new(licensing.clone(), &issuer),
            evidence: Evidence::new(
                licensing.clone(),
                Checkpoints::new(licensing.clone(), &issuer),
                objects,
            ),
            jobs: ProjectionRunner::new(db.clone(), Arc::new(quantus_projections::jobs::JobsView)),
            licensing,
            identity,
            issuer,
            bus,
            db,
            metrics: Arc::new(Metrics::default()),
        }
    }
}
