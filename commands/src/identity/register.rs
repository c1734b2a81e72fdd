//! Use case: register a person with their login (issue 16 item 2).
//!
//! The one place that claims a person's logins in the login index, registers the user and,
//! when anything after a claim fails, releases exactly what it claimed. The REST API
//! (`POST /v1/users`) and SCIM (`POST /Users`) both go through it; neither touches the login
//! index itself when creating a user.
//!
//! The login index enforces unique logins at once (a read model would only eventually).
//! Emails are unique within an organization: another organization's user with the same
//! address neither blocks this one nor changes the answer (tenants are isolated).

use std::future::Future;

use quantus_domain::CommandContext;

use super::{normalize_email, storage, Identity, NewUser};
use crate::{CommandError, CommandOutcome};

/// What to register, and which of the person's logins to claim for them.
#[derive(Debug, Clone)]
pub struct Registration {
    pub user: NewUser,
    /// Claim `user.email` in `user.organization_id` (false for an address that is not a
    /// login, such as the `.invalid` one SCIM gives a user without a usable email).
    pub claim_email: bool,
    /// One more login name, claimed first (SCIM's userName, already scoped to the
    /// organization by the caller). Only its keyed digest is stored.
    pub login: Option<String>,
}

impl Registration {
    /// A person who signs in with their email in the organization.
    pub fn with_email(user: NewUser) -> Self {
        Self {
            user,
            claim_email: true,
            login: None,
        }
    }
}

/// Why a registration did not happen. Nothing claimed by it stays claimed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError<E = CommandError> {
    /// Someone holds the extra login (`Registration::login`).
    #[error("the login is already taken")]
    LoginTaken,
    /// The organization has a user with this email (whether another organization does is
    /// neither asked nor told).
    #[error("a user with this email already exists")]
    EmailTaken,
    /// The email is not an address, the register command was refused, a follow-up step
    /// failed, or storage did.
    #[error(transparent)]
    Failed(E),
}

/// The REST API's errors: a taken login or email is a conflict (409), with the message the
/// API has always given.
impl From<RegistrationError> for CommandError {
    fn from(e: RegistrationError) -> Self {
        match e {
            RegistrationError::LoginTaken | RegistrationError::EmailTaken => {
                CommandError::Rejected(e.to_string())
            }
            RegistrationError::Failed(e) => e,
        }
    }
}

/// The claims one registration holds, to release on failure.
struct Claims {
    login: Option<String>,
    email: Option<(String, String)>,
}

impl Identity {
    /// Claims the registration's logins, registers the user and, on any failure, releases
    /// every claim it made (and the subject key the sealing created).
    pub async fn register_person(
        &self,
        ctx: &CommandContext,
        id: &str,
        registration: Registration,
    ) -> Result<CommandOutcome, RegistrationError> {
        self.register_person_then(ctx, id, registration, |outcome| async move {
            Ok::<_, CommandError>(outcome)
        })
        .await
    }

    /// As [`register_person`](Self::register_person), then `then` (further commands on the
    /// new user, e.g. SCIM's profile and `active`); its failure releases the claims too.
    pub async fn register_person_then<E, F, Fut>(
        &self,
        ctx: &CommandContext,
        id: &str,
        registration: Registration,
        then: F,
    ) -> Result<CommandOutcome, RegistrationError<E>>
    where
        E: From<CommandError>,
        F: FnOnce(CommandOutcome) -> Fut,
        Fut: Future<Output = Result<CommandOutcome, E>>,
    {
        let Registration {
            mut user,
            claim_email,
            login,
        } = registration;
        let failed = |e: CommandError| RegistrationError::Failed(E::from(e));
        user.email = normalize_email(&user.email).map_err(failed)?;
        let organization_id = user.organization_id.clone();
        let mut claims = Claims {
            login: None,
            email: None,
        };
        if let Some(login) = login {
            let digest = self.keys.login_digest(&login);
            if !self
                .keys
                .claim_login(&digest, id)
                .await
                .map_err(|e| failed(storage(e)))?
            {
                return Err(RegistrationError::LoginTaken);
            }
            claims.login = Some(digest);
        }
        if claim_email {
            match self
                .keys
                .claim_email(&organization_id, &user.email, id)
                .await
            {
                Ok(true) => claims.email = Some((organization_id.clone(), user.email.clone())),
                Ok(false) => {
                    self.release(id, claims).await.map_err(failed)?;
                    return Err(RegistrationError::EmailTaken);
                }
                Err(e) => {
                    self.release(id, claims).await.map_err(failed)?;
                    return Err(failed(storage(e)));
                }
            }
        }
        let result = match self.register_user(ctx, id, user).await {
            Ok(outcome) => then(outcome).await,
            Err(e) => Err(E::from(e)),
        };
        match result {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                self.release(id, claims).await.map_err(failed)?;
                // The data key the sealing created: nothing it sealed is to be read.
                let _ = self.keys.erase(id).await;
                Err(RegistrationError::Failed(e))
            }
        }
    }

    /// Releases what one registration claimed: every release is tried; the first storage
    /// failure is reported.
    async fn release(&self, id: &str, claims: Claims) -> Result<(), CommandError> {
        let mut first = Ok(());
        if let Some(login) = claims.login {
            if let Err(e) = self.keys.release_login(&login).await {
                first = first.and(Err(storage(e)));
            }
        }
        if let Some((organization_id, email)) = claims.email {
            if let Err(e) = self.keys.release_email(&organization_id, &email, id).await {
                first = first.and(Err(storage(e)));
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    //! Given the login index and the log / when registering / expect events and claims; on a
    //! temporary embedded (SQLite) store.

    use std::sync::Arc;

    use cqrs_es::persist::PersistedEventRepository;
    use quantus_domain::identity::user::User;
    use quantus_domain::identity::Role;
    use quantus_domain::organization::OrganizationCommand;
    use quantus_infra::keystore::{master_key, FileKeystore};
    use quantus_infra::subject_keys::{SignInThrottle, SubjectKeys};
    use quantus_infra::{Database, SqlEventRepository};

    use super::*;
    use crate::licensing::Licensing;
    use crate::testing::{ctx, Scratch};
    use crate::CommandBus;

    struct Given {
        identity: Identity,
        bus: CommandBus,
        org: String,
        _store: Scratch,
    }

    fn id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// An empty organization on a fresh store.
    async fn an_empty_organization() -> Given {
        let dir = std::env::temp_dir().join(format!("quantus-register-{}", id()));
        let db = Database::open(None, &dir).await.unwrap();
        let bus = CommandBus::new(SqlEventRepository::new(db.clone()));
        let keystore = Arc::new(FileKeystore::open(&dir, None).unwrap());
        let master = master_key(&dir, None).unwrap();
        let identity = Identity::new(
            bus.clone(),
            Licensing::new(bus.clone(), keystore, "https://test.invalid"),
            SubjectKeys::new(db.clone(), &master),
            SignInThrottle::new(db),
            "http://localhost:8080",
        );
        let given = Given {
            identity,
            bus,
            org: String::new(),
            _store: Scratch(dir),
        };
        given.organization().await
    }

    impl Given {
        /// The same store with another (new) organization in focus.
        async fn organization(self) -> Given {
            let org = id();
            self.bus
                .organization(
                    &ctx(&org),
                    &org,
                    OrganizationCommand::Create {
                        name: "Acme".into(),
                    },
                    Some(0),
                )
                .await
                .unwrap();
            Given { org, ..self }
        }

        fn person(&self, email: &str) -> NewUser {
            NewUser {
                organization_id: self.org.clone(),
                email: email.into(),
                name: "Ada Lovelace".into(),
                password: None,
                roles: [Role::Member].into(),
            }
        }

        async fn register(
            &self,
            id: &str,
            registration: Registration,
        ) -> Result<CommandOutcome, RegistrationError> {
            self.identity
                .register_person(&ctx(&self.org), id, registration)
                .await
        }

        async fn events(&self, id: &str) -> Vec<String> {
            self.bus
                .repository()
                .get_events::<User>(id)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event_type)
                .collect()
        }

        async fn email_holder(&self, email: &str) -> Option<String> {
            let keys = self.identity.subject_keys();
            keys.find_email(&self.org, email).await.unwrap()
        }

        async fn login_holder(&self, login: &str) -> Option<String> {
            let keys = self.identity.subject_keys();
            keys.find_login(&keys.login_digest(login)).await.unwrap()
        }
    }

    fn with_login(user: NewUser, login: &str) -> Registration {
        Registration {
            login: Some(login.into()),
            ..Registration::with_email(user)
        }
    }

    #[tokio::test]
    async fn registering_in_an_empty_organization_records_the_user_and_claims_the_email() {
        let given = an_empty_organization().await;
        let ada = id();

        let outcome = given
            .register(
                &ada,
                with_login(given.person(" Ada@Example.com "), "scim\0ada"),
            )
            .await
            .unwrap();

        assert_eq!(outcome.events, 1);
        assert_eq!(given.events(&ada).await, ["UserRegistered"]);
        // Claimed normalised (trimmed, lower-cased), as sign-in looks it up.
        assert_eq!(
            given.email_holder("ada@example.com").await,
            Some(ada.clone())
        );
        assert_eq!(given.login_holder("scim\0ada").await, Some(ada.clone()));
        let profile = given.identity.user_profile(&ada).await.unwrap();
        assert_eq!(profile.email.as_deref(), Some("ada@example.com"));
    }

    #[tokio::test]
    async fn a_taken_email_is_a_uniqueness_error_and_claims_or_writes_nothing() {
        let given = an_empty_organization().await;
        let ada = id();
        given
            .register(
                &ada,
                Registration::with_email(given.person("ada@example.com")),
            )
            .await
            .unwrap();
        let again = id();

        let err = given
            .register(
                &again,
                with_login(given.person("ADA@example.com"), "scim\0ada2"),
            )
            .await
            .unwrap_err();

        assert!(matches!(err, RegistrationError::EmailTaken), "{err:?}");
        let err = CommandError::from(err);
        assert!(matches!(&err, CommandError::Rejected(_)), "{err:?}");
        assert_eq!(err.to_string(), "a user with this email already exists");
        assert!(given.events(&again).await.is_empty());
        assert_eq!(given.email_holder("ada@example.com").await, Some(ada));
        // The extra login it claimed before the email was released.
        assert_eq!(given.login_holder("scim\0ada2").await, None);
    }

    #[tokio::test]
    async fn another_organizations_user_with_the_same_email_does_not_block() {
        let given = an_empty_organization().await;
        let ada = id();
        given
            .register(
                &ada,
                Registration::with_email(given.person("ada@example.com")),
            )
            .await
            .unwrap();
        let given = given.organization().await;
        let other = id();

        given
            .register(
                &other,
                Registration::with_email(given.person("ada@example.com")),
            )
            .await
            .unwrap();

        assert_eq!(given.email_holder("ada@example.com").await, Some(other));
    }

    #[tokio::test]
    async fn a_taken_extra_login_is_refused_before_the_email_is_claimed() {
        let given = an_empty_organization().await;
        let ada = id();
        given
            .register(
                &ada,
                with_login(given.person("ada@example.com"), "scim\0ada"),
            )
            .await
            .unwrap();
        let again = id();

        let err = given
            .register(
                &again,
                with_login(given.person("bob@example.com"), "scim\0ada"),
            )
            .await
            .unwrap_err();

        assert!(matches!(err, RegistrationError::LoginTaken), "{err:?}");
        assert!(given.events(&again).await.is_empty());
        assert_eq!(given.email_holder("bob@example.com").await, None);
        assert_eq!(given.login_holder("scim\0ada").await, Some(ada));
    }

    #[tokio::test]
    async fn a_refused_register_command_releases_every_claim() {
        let given = an_empty_organization().await;
        let ada = id();
        let mut nameless = given.person("ada@example.com");
        nameless.name = " ".into();

        let err = given
            .register(&ada, with_login(nameless, "scim\0ada"))
            .await
            .unwrap_err();

        assert!(
            matches!(&err, RegistrationError::Failed(CommandError::Invalid(d)) if d.starts_with("name must be")),
            "{err:?}"
        );
        assert!(given.events(&ada).await.is_empty());
        assert_eq!(given.email_holder("ada@example.com").await, None);
        assert_eq!(given.login_holder("scim\0ada").await, None);
        // Both can be registered afterwards.
        let again = id();
        given
            .register(
                &again,
                with_login(given.person("ada@example.com"), "scim\0ada"),
            )
            .await
            .unwrap();
        assert_eq!(given.email_holder("ada@example.com").await, Some(again));
    }

    #[tokio::test]
    async fn an_email_that_is_no_address_is_invalid_and_claims_nothing() {
        let given = an_empty_organization().await;
        let ada = id();

        let err = given
            .register(
                &ada,
                with_login(given.person("not an address"), "scim\0ada"),
            )
            .await
            .unwrap_err();

        assert!(
            matches!(&err, RegistrationError::Failed(CommandError::Invalid(_))),
            "{err:?}"
        );
        assert_eq!(given.login_holder("scim\0ada").await, None);
    }

    #[tokio::test]
    async fn a_failed_follow_up_releases_every_claim_and_the_data_key() {
        let given = an_empty_organization().await;
        let ada = id();

        let err = given
            .identity
            .register_person_then(
                &ctx(&given.org),
                &ada,
                with_login(given.person("ada@example.com"), "scim\0ada"),
                |_| async { Err(CommandError::Upstream("the mail server is down".into())) },
            )
            .await
            .unwrap_err();

        assert!(
            matches!(&err, RegistrationError::Failed(CommandError::Upstream(_))),
            "{err:?}"
        );
        assert_eq!(given.email_holder("ada@example.com").await, None);
        assert_eq!(given.login_holder("scim\0ada").await, None);
        // What was sealed for the half-made user no longer opens.
        let profile = given.identity.user_profile(&ada).await.unwrap();
        assert_eq!(profile.email, None);
        let again = id();
        given
            .register(
                &again,
                Registration::with_email(given.person("ada@example.com")),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_address_that_is_no_login_is_registered_without_a_claim() {
        let given = an_empty_organization().await;
        let ada = id();
        let placeholder = format!("{ada}@scim.invalid");

        given
            .register(
                &ada,
                Registration {
                    claim_email: false,
                    ..Registration::with_email(given.person(&placeholder))
                },
            )
            .await
            .unwrap();

        assert_eq!(given.events(&ada).await, ["UserRegistered"]);
        assert_eq!(given.email_holder(&placeholder).await, None);
    }
}
