//! User: a person who signs in, with memberships (organization → roles) and sealed personal data.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{role_allowed_in, Role, Sealed};

use crate::decision::record_decision;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCommand {
    Register {
        organization_id: String,
        email: Sealed,
        name: Sealed,
        roles: BTreeSet<Role>,
        /// Set in the same command so that a user never exists half-made.
        password_hash: Option<Sealed>,
    },
    SetPassword {
        password_hash: Sealed,
    },
    GrantRole {
        organization_id: String,
        role: Role,
    },
    RevokeRole {
        organization_id: String,
        role: Role,
    },
    Disable {
        reason: String,
    },
    Enable,
    /// Crypto-shredding: the application destroys the data key; the event says it happened.
    Erase,
    /// Replaces the provisioning profile (SCIM attributes beyond email and name), sealed.
    SetProfile {
        profile: Sealed,
    },
    /// Moves the login email (sealed). The application claims the new address in the login
    /// index before and releases the old one after.
    ChangeEmail {
        email: Sealed,
    },
    /// Records a set-password invite (the SHA-256 of its secret); replaces any earlier one.
    Invite {
        secret_sha256: String,
        expires_at: DateTime<Utc>,
    },
    /// Sets the password through the pending invite (the application checked the secret):
    /// once, and only before it expires.
    AcceptInvite {
        secret_sha256: String,
        now: DateTime<Utc>,
        password_hash: Sealed,
    },
}

/// A pending set-password invite: only the digest of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInvite {
    pub secret_sha256: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRegistered {
    pub organization_id: String,
    pub email: Sealed,
    pub name: Sealed,
    pub roles: BTreeSet<Role>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPasswordSet {
    /// The argon2id PHC string, sealed with the user's data key.
    pub password_hash: Sealed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRoleGranted {
    pub organization_id: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRoleRevoked {
    pub organization_id: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserDisabled {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserEnabled {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserErased {}

/// The user's provisioning profile (SCIM: userName, name parts, emails, phone numbers,
/// title, enterprise attributes...) as one JSON document sealed with the user's data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserProfileChanged {
    pub profile: Sealed,
}

/// A one-time set-password link was made; only the SHA-256 of its secret is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInvited {
    pub secret_sha256: String,
    #[schemars(with = "String")]
    pub expires_at: DateTime<Utc>,
}

/// The pending invite was used (followed by `UserPasswordSet`); it works no more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInviteAccepted {}

/// The login email moved (a rename by the provisioning client); sealed like the first one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserEmailChanged {
    pub email: Sealed,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum UserEvent for "User" {
        UserRegistered(UserRegistered),
        UserPasswordSet(UserPasswordSet),
        UserRoleGranted(UserRoleGranted),
        UserRoleRevoked(UserRoleRevoked),
        UserDisabled(UserDisabled),
        UserEnabled(UserEnabled),
        UserErased(UserErased),
        UserProfileChanged(UserProfileChanged),
        UserEmailChanged(UserEmailChanged),
        UserInvited(UserInvited),
        UserInviteAccepted(UserInviteAccepted),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user already exists")]
    AlreadyExists,
    #[error("user not found")]
    NotFound,
    #[error("user was erased")]
    Erased,
    #[error("a user needs at least one role")]
    NoRole,
    #[error("role {0:?} exists only in the platform organization")]
    RoleNotAllowed(Role),
    #[error("the user would have no role left in its organization")]
    LastRole,
    #[error("user is already disabled")]
    AlreadyDisabled,
    #[error("user is not disabled")]
    NotDisabled,
    #[error("reason must be at most 500 characters")]
    ReasonTooLong,
    #[error("the invite is not valid (used, replaced or expired)")]
    InviteInvalid,
}

impl UserError {
    pub fn is_validation(&self) -> bool {
        matches!(
            self,
            Self::NoRole | Self::RoleNotAllowed(_) | Self::ReasonTooLong
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum UserStatus {
    #[default]
    Absent,
    Active,
    Disabled,
    Erased,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub status: UserStatus,
    pub organization_id: String,
    pub memberships: BTreeMap<String, BTreeSet<Role>>,
    pub email: Option<Sealed>,
    pub name: Option<Sealed>,
    pub password_hash: Option<Sealed>,
    #[serde(default)]
    pub profile: Option<Sealed>,
    #[serde(default)]
    pub invite: Option<PendingInvite>,
}

impl User {
    /// Roles held in `organization_id`.
    pub fn roles_in(&self, organization_id: &str) -> BTreeSet<Role> {
        self.memberships
            .get(organization_id)
            .cloned()
            .unwrap_or_default()
    }

    fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        use UserCommand as C;
        use UserEvent as E;
        use UserStatus as S;
        match (self.status, command) {
            (
                S::Absent,
                C::Register {
                    organization_id,
                    email,
                    name,
                    roles,
                    password_hash,
                },
            ) => {
                if roles.is_empty() {
                    return Err(UserError::NoRole);
                }
                if let Some(r) = roles
                    .iter()
                    .find(|r| !role_allowed_in(**r, &organization_id))
                {
                    return Err(UserError::RoleNotAllowed(*r));
                }
                let mut events = vec![E::UserRegistered(UserRegistered {
                    organization_id,
                    email,
                    name,
                    roles,
                })];
                if let Some(password_hash) = password_hash {
                    events.push(E::UserPasswordSet(UserPasswordSet { password_hash }));
                }
                Ok(events)
            }
            (S::Absent, _) => Err(UserError::NotFound),
            (S::Erased, _) => Err(UserError::Erased),
            (_, C::Register { .. }) => Err(UserError::AlreadyExists),
            (_, C::Erase) => Ok(vec![E::UserErased(UserErased {})]),
            (_, C::SetProfile { profile }) => {
                if self.profile.as_ref() == Some(&profile) {
                    return Ok(vec![]);
                }
                Ok(vec![E::UserProfileChanged(UserProfileChanged { profile })])
            }
            (_, C::ChangeEmail { email }) => {
                if self.email.as_ref() == Some(&email) {
                    return Ok(vec![]);
                }
                Ok(vec![E::UserEmailChanged(UserEmailChanged { email })])
            }
            (
                _,
                C::Invite {
                    secret_sha256,
                    expires_at,
                },
            ) => Ok(vec![E::UserInvited(UserInvited {
                secret_sha256,
                expires_at,
            })]),
            (
                _,
                C::AcceptInvite {
                    secret_sha256,
                    now,
                    password_hash,
                },
            ) => match &self.invite {
                Some(i) if i.secret_sha256 == secret_sha256 && now < i.expires_at => Ok(vec![
                    E::UserInviteAccepted(UserInviteAccepted {}),
                    E::UserPasswordSet(UserPasswordSet { password_hash }),
                ]),
                _ => Err(UserError::InviteInvalid),
            },
            (_, C::SetPassword { password_hash }) => {
                Ok(vec![E::UserPasswordSet(UserPasswordSet { password_hash })])
            }
            (
                _,
                C::GrantRole {
                    organization_id,
                    role,
                },
            ) => {
                if !role_allowed_in(role, &organization_id) {
                    return Err(UserError::RoleNotAllowed(role));
                }
                if self.roles_in(&organization_id).contains(&role) {
                    return Ok(vec![]);
                }
                Ok(vec![E::UserRoleGranted(UserRoleGranted {
                    organization_id,
                    role,
                })])
            }
            (
                _,
                C::RevokeRole {
                    organization_id,
                    role,
                },
            ) => {
                let roles = self.roles_in(&organization_id);
                if !roles.contains(&role) {
                    return Ok(vec![]);
                }
                if organization_id == self.organization_id && roles.len() == 1 {
                    return Err(UserError::LastRole);
                }
                Ok(vec![E::UserRoleRevoked(UserRoleRevoked {
                    organization_id,
                    role,
                })])
            }
            (S::Disabled, C::Disable { .. }) => Err(UserError::AlreadyDisabled),
            (_, C::Disable { reason }) => {
                let reason = reason.trim().to_owned();
                if reason.chars().count() > 500 {
                    return Err(UserError::ReasonTooLong);
                }
                Ok(vec![E::UserDisabled(UserDisabled { reason })])
            }
            (S::Disabled, C::Enable) => Ok(vec![E::UserEnabled(UserEnabled {})]),
            (_, C::Enable) => Err(UserError::NotDisabled),
        }
    }
}

impl Aggregate for User {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        record_decision(self.decide(command), self, sink).await
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered(e) => {
                self.status = UserStatus::Active;
                self.memberships.insert(e.organization_id.clone(), e.roles);
                self.organization_id = e.organization_id;
                self.email = Some(e.email);
                self.name = Some(e.name);
            }
            UserEvent::UserPasswordSet(e) => self.password_hash = Some(e.password_hash),
            UserEvent::UserRoleGranted(e) => {
                self.memberships
                    .entry(e.organization_id)
                    .or_default()
                    .insert(e.role);
            }
            UserEvent::UserRoleRevoked(e) => {
                if let Some(roles) = self.memberships.get_mut(&e.organization_id) {
                    roles.remove(&e.role);
                    if roles.is_empty() {
                        self.memberships.remove(&e.organization_id);
                    }
                }
            }
            UserEvent::UserDisabled(_) => self.status = UserStatus::Disabled,
            UserEvent::UserEnabled(_) => self.status = UserStatus::Active,
            UserEvent::UserProfileChanged(e) => self.profile = Some(e.profile),
            UserEvent::UserEmailChanged(e) => self.email = Some(e.email),
            UserEvent::UserInvited(e) => {
                self.invite = Some(PendingInvite {
                    secret_sha256: e.secret_sha256,
                    expires_at: e.expires_at,
                })
            }
            UserEvent::UserInviteAccepted(_) => self.invite = None,
            UserEvent::UserErased(_) => {
                *self = User {
                    status: UserStatus::Erased,
                    organization_id: std::mem::take(&mut self.organization_id),
                    ..User::default()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use UserCommand as C;
    use UserEvent as E;

    type Spec = TestFramework<User>;

    fn sealed(v: &str) -> Sealed {
        Sealed {
            subject: "u1".into(),
            nonce: "n".into(),
            ciphertext: v.into(),
        }
    }
    fn registered(roles: &[Role]) -> E {
        E::UserRegistered(UserRegistered {
            organization_id: "org".into(),
            email: sealed("e"),
            name: sealed("n"),
            roles: roles.iter().copied().collect(),
        })
    }

    #[test]
    fn a_user_registers_with_at_least_one_role_allowed_in_its_organization() {
        let register = |roles: &[Role]| C::Register {
            organization_id: "org".into(),
            email: sealed("e"),
            name: sealed("n"),
            roles: roles.iter().copied().collect(),
            password_hash: None,
        };
        Spec::with(())
            .given_no_previous_events()
            .when(register(&[Role::Member]))
            .then_expect_events(vec![registered(&[Role::Member])]);
        Spec::with(())
            .given_no_previous_events()
            .when(register(&[]))
            .then_expect_error(UserError::NoRole);
        Spec::with(())
            .given_no_previous_events()
            .when(register(&[Role::PlatformAdmin]))
            .then_expect_error(UserError::RoleNotAllowed(Role::PlatformAdmin));
    }

    #[test]
    fn an_erased_user_refuses_everything_and_forgets_its_sealed_data() {
        Spec::with(())
            .given(vec![registered(&[Role::Member])])
            .when(C::Erase)
            .then_expect_events(vec![E::UserErased(UserErased {})]);
        Spec::with(())
            .given(vec![
                registered(&[Role::Member]),
                E::UserErased(UserErased {}),
            ])
            .when(C::Enable)
            .then_expect_error(UserError::Erased);
        let mut u = User::default();
        u.apply(registered(&[Role::Member]));
        u.apply(E::UserErased(UserErased {}));
        u.apply(E::UserProfileChanged(UserProfileChanged {
            profile: sealed("p"),
        }));
        assert!(u.profile.is_some());
        u.apply(E::UserErased(UserErased {}));
        assert!(u.email.is_none() && u.name.is_none() && u.memberships.is_empty());
        assert!(u.profile.is_none());
    }

    #[test]
    fn the_login_email_moves_while_the_user_lives() {
        let changed = E::UserEmailChanged(UserEmailChanged {
            email: sealed("e2"),
        });
        Spec::with(())
            .given(vec![registered(&[Role::Member])])
            .when(C::ChangeEmail {
                email: sealed("e2"),
            })
            .then_expect_events(vec![changed.clone()]);
        Spec::with(())
            .given(vec![registered(&[Role::Member]), changed.clone()])
            .when(C::ChangeEmail {
                email: sealed("e2"),
            })
            .then_expect_events(vec![]);
        Spec::with(())
            .given(vec![
                registered(&[Role::Member]),
                E::UserErased(UserErased {}),
            ])
            .when(C::ChangeEmail {
                email: sealed("e2"),
            })
            .then_expect_error(UserError::Erased);
        Spec::with(())
            .given_no_previous_events()
            .when(C::ChangeEmail {
                email: sealed("e2"),
            })
            .then_expect_error(UserError::NotFound);
        let mut u = User::default();
        u.apply(registered(&[Role::Member]));
        u.apply(changed);
        assert_eq!(u.email, Some(sealed("e2")));
    }

    #[test]
    fn an_invite_sets_the_password_once_and_only_before_it_expires() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let invited = E::UserInvited(UserInvited {
            secret_sha256: "d1".into(),
            expires_at: at("2026-01-04T00:00:00Z"),
        });
        let accept = |digest: &str, now: &str| C::AcceptInvite {
            secret_sha256: digest.into(),
            now: at(now),
            password_hash: sealed("h"),
        };
        Spec::with(())
            .given(vec![registered(&[Role::Member]), invited.clone()])
            .when(accept("d1", "2026-01-03T23:59:59Z"))
            .then_expect_events(vec![
                E::UserInviteAccepted(UserInviteAccepted {}),
                E::UserPasswordSet(UserPasswordSet {
                    password_hash: sealed("h"),
                }),
            ]);
        // Expired, used, replaced, or never made.
        Spec::with(())
            .given(vec![registered(&[Role::Member]), invited.clone()])
            .when(accept("d1", "2026-01-04T00:00:00Z"))
            .then_expect_error(UserError::InviteInvalid);
        Spec::with(())
            .given(vec![
                registered(&[Role::Member]),
                invited.clone(),
                E::UserInviteAccepted(UserInviteAccepted {}),
            ])
            .when(accept("d1", "2026-01-02T00:00:00Z"))
            .then_expect_error(UserError::InviteInvalid);
        Spec::with(())
            .given(vec![
                registered(&[Role::Member]),
                invited,
                E::UserInvited(UserInvited {
                    secret_sha256: "d2".into(),
                    expires_at: at("2026-01-05T00:00:00Z"),
                }),
            ])
            .when(accept("d1", "2026-01-02T00:00:00Z"))
            .then_expect_error(UserError::InviteInvalid);
        Spec::with(())
            .given(vec![registered(&[Role::Member])])
            .when(accept("d1", "2026-01-02T00:00:00Z"))
            .then_expect_error(UserError::InviteInvalid);
    }

    #[test]
    fn the_last_role_in_the_home_organization_cannot_be_revoked() {
        Spec::with(())
            .given(vec![registered(&[Role::Member])])
            .when(C::RevokeRole {
                organization_id: "org".into(),
                role: Role::Member,
            })
            .then_expect_error(UserError::LastRole);
        Spec::with(())
            .given(vec![registered(&[Role::Member, Role::Admin])])
            .when(C::RevokeRole {
                organization_id: "org".into(),
                role: Role::Admin,
            })
            .then_expect_events(vec![E::UserRoleRevoked(UserRoleRevoked {
                organization_id: "org".into(),
                role: Role::Admin,
            })]);
    }

    #[test]
    fn disabling_and_enabling_alternate() {
        Spec::with(())
            .given(vec![registered(&[Role::Member])])
            .when(C::Enable)
            .then_expect_error(UserError::NotDisabled);
        Spec::with(())
            .given(vec![
                registered(&[Role::Member]),
                E::UserDisabled(UserDisabled { reason: "x".into() }),
            ])
            .when(C::Disable { reason: "y".into() })
            .then_expect_error(UserError::AlreadyDisabled);
    }
}
