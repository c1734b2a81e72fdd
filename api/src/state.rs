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

use crate::metrics::{Metrics, Readiness};
use quantus_commands::commercial::Portal;
use quantus_infra::billing::{BillingProvider, BuiltInBilling};
use quantus_infra::config::Secret;
use quantus_infra::gateway::{JwksCache, QuantumLockClient};

/// The Portal's view of QSA: whose tokens it accepts and where their keys are published.
pub struct Gateway {
    /// QSA's issuer URL (tokens' `iss`; their audience is `<issuer>/v1`).
    pub issuer: String,
    pub jwks: JwksCache,
}

impl Gateway {
    pub fn new(qsa_issuer: &str) -> Self {
        Self {
            issuer: qsa_issuer.trim_end_matches('/').to_owned(),
            // Refetched at least every minute, as QSA's Cache-Control asks.
            jwks: JwksCache::new(qsa_issuer, std::time::Duration::from_secs(60)),
        }
    }
}

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
    /// Signed compliance exports of one tenant's events.
    pub exports: quantus_commands::export::ComplianceExport,
    pub portal: Portal,
    pub commercial: ProjectionRunner,
    /// How Portal routes verify QSA's tokens (its JWKS, cached).
    pub gateway: Arc<Gateway>,
    /// QuantumLock as the Portal reaches it (with its own service-principal token); set once
    /// the Portal's credentials are known.
    pub quantumlock: Option<QuantumLockClient>,
    /// The Stripe webhook signing secret; without it the webhook refuses every call.
    pub stripe_webhook_secret: Option<Secret>,
    /// The public base URL: the OIDC issuer, and the issuer named in signed documents.
    pub issuer: String,
    /// QSA as a SAML 2.0 identity provider.
    pub saml: quantus_commands::saml::Saml,
    /// When `/readyz` calls a read model stalled or lagging.
    pub readiness: Readiness,
    /// The web consoles' client credentials at QSA (a console is served once its are known).
    pub consoles: crate::console::ConsoleClients,
    pub(crate) metrics: Arc<Metrics>,
    /// Bounds on request bodies (sizes, read timeouts); the defaults unless configured.
    pub limits: quantus_infra::HttpLimits,
    /// Set-password invites for people provisioned without a password; `None`: no invites
    /// (`serve` always sets them, with the outbox sender under `DATA_DIR/outbox`).
    pub invites: Option<quantus_commands::invites::Invites>,
    /// DPoP proof checking (RFC 9449): the replay cache of this process and the nonce key.
    pub dpop: Arc<crate::dpop::Dpop>,
    /// The Kafka partitions' ends, against which `/metrics` measures each read model's
    /// consumer lag; `None` without Kafka (no lag series then).
    pub kafka_ends: Option<Arc<quantus_infra::kafka::PartitionEnds>>,
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
        let metrics = Arc::new(Metrics::default());
        bus.observe(metrics.clone());
        let licensing = Licensing::new(bus.clone(), keystore, issuer.clone());
        let keys = SubjectKeys::new(db.clone(), master_key);
        let identity = Identity::new(
            bus.clone(),
            licensing.clone(),
            keys.clone(),
            SignInThrottle::new(db.clone()),
            issuer.clone(),
        );
        let saml = quantus_commands::saml::Saml::new(
            bus.clone(),
            quantus_infra::saml_keys::SamlKeys::new(db.clone(), master_key),
            identity.clone(),
            &issuer,
        );
        Self {
            saml,
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
            exports: quantus_commands::export::ComplianceExport::new(
                licensing.clone(),
                Checkpoints::new(licensing.clone(), &issuer),
            ),
            evidence: Evidence::new(
                licensing.clone(),
                Checkpoints::new(licensing.clone(), &issuer),
                objects,
            ),
            jobs: ProjectionRunner::new(db.clone(), Arc::new(quantus_projections::jobs::JobsView)),
            portal: Portal::new(bus.clone(), Arc::new(BuiltInBilling)),
            commercial: ProjectionRunner::new(
                db.clone(),
                Arc::new(quantus_projections::commercial::CommercialView),
            ),
            gateway: Arc::new(Gateway::new(&issuer)),
            quantumlock: None,
            stripe_webhook_secret: None,
            consoles: Default::default(),
            licensing,
            identity,
            issuer,
            bus,
            db,
            readiness: Readiness::default(),
            metrics,
            limits: quantus_infra::HttpLimits::default(),
            invites: None,
            kafka_ends: None,
            // Nonces are a MAC under a key derived from the master key: every process of
            // the deployment issues and accepts the same ones, with nothing stored.
            dpop: Arc::new(crate::dpop::Dpop::new(<[u8; 32]>::from(
                <sha2::Sha256 as sha2::Digest>::digest(
                    [
                        b"quantus-dpop-nonce-key/v1\0".as_slice(),
                        master_key.as_slice(),
                    ]
                    .concat(),
                ),
            ))),
        }
    }

    /// Uses `billing` for invoices (the built-in records by default).
    pub fn with_billing(mut self, billing: Arc<dyn BillingProvider>) -> Self {
        self.portal = Portal::new(self.bus.clone(), billing);
        self
    }

    /// Every read model's name (readiness and metrics report each).
    pub fn read_model_names(&self) -> Vec<&'static str> {
        [
            &self.organizations,
            &self.licenses,
            &self.users,
            &self.jobs,
            &self.commercial,
        ]
        .iter()
        .map(|runner| runner.projection().name())
        .chain([quantus_projections::groups::GroupsView::NAME])
        .collect()
    }

    /// Trusts tokens of the QSA at `qsa_issuer` (this process's own by default).
    pub fn with_qsa(mut self, qsa_issuer: &str) -> Self {
        self.gateway = Arc::new(Gateway::new(qsa_issuer));
        self
    }
}
