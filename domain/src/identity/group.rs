//! Group: named sets of users in an organization (for conditional access and SCIM).

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::record_decision;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupCreated {
    pub organization_id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupRenamed {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupMemberAdded {
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupMemberRemoved {
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupDeleted {}

/// The identifier the provisioning client (SCIM `externalId`) gives the group; not personal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupExternalIdChanged {
    pub external_id: Option<String>,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum GroupEvent for "Group" {
        GroupCreated(GroupCreated),
        GroupRenamed(GroupRenamed),
        GroupMemberAdded(GroupMemberAdded),
        GroupMemberRemoved(GroupMemberRemoved),
        GroupDeleted(GroupDeleted),
        GroupExternalIdChanged(GroupExternalIdChanged),
    }
}

/// `AddMember` carries the member's organizations, looked up by the application: a group
/// holds members of its own organization only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCommand {
    Create {
        organization_id: String,
        name: String,
    },
    Rename {
        name: String,
    },
    AddMember {
        user_id: String,
        member_of: BTreeSet<String>,
    },
    RemoveMember {
        user_id: String,
    },
    Delete,
    SetExternalId {
        external_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("group already exists")]
    AlreadyExists,
    #[error("group not found")]
    NotFound,
    #[error("name must be 1 to 128 characters without control characters")]
    BadName,
    #[error("the user is not a member of the group's organization")]
    NotInOrganization,
    #[error("externalId must be 1 to 256 characters without control characters")]
    BadExternalId,
}

impl GroupError {
    pub fn is_validation(&self) -> bool {
        matches!(
            self,
            Self::BadName | Self::NotInOrganization | Self::BadExternalId
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub exists: bool,
    pub deleted: bool,
    pub organization_id: String,
    pub name: String,
    pub members: BTreeSet<String>,
    #[serde(default)]
    pub external_id: Option<String>,
}

fn check_name(raw: &str) -> Result<String, GroupError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(GroupError::BadName);
    }
    Ok(name.to_owned())
}

impl Group {
    fn decide(&self, command: GroupCommand) -> Result<Vec<GroupEvent>, GroupError> {
        use GroupCommand as C;
        use GroupEvent as E;
        if let C::Create {
            organization_id,
            name,
        } = command
        {
            if self.exists {
                return Err(GroupError::AlreadyExists);
            }
            return Ok(vec![E::GroupCreated(GroupCreated {
                organization_id,
                name: check_name(&name)?,
            })]);
        }
        if !self.exists || self.deleted {
            return Err(GroupError::NotFound);
        }
        Ok(match command {
            C::Create { .. } => unreachable!("handled above"),
            C::Rename { name } => {
                let name = check_name(&name)?;
                if name == self.name {
                    vec![]
                } else {
                    vec![E::GroupRenamed(GroupRenamed { name })]
                }
            }
            C::AddMember { user_id, member_of } => {
                if !member_of.contains(&self.organization_id) {
                    return Err(GroupError::NotInOrganization);
                }
                if self.members.contains(&user_id) {
                    vec![]
                } else {
                    vec![E::GroupMemberAdded(GroupMemberAdded { user_id })]
                }
            }
            C::RemoveMember { user_id } => {
                if self.members.contains(&user_id) {
                    vec![E::GroupMemberRemoved(GroupMemberRemoved { user_id })]
                } else {
                    vec![]
                }
            }
            C::Delete => vec![E::GroupDeleted(GroupDeleted {})],
            C::SetExternalId { external_id } => {
                if external_id.as_ref().is_some_and(|x| {
                    x.is_empty() || x.chars().count() > 256 || x.chars().any(char::is_control)
                }) {
                    return Err(GroupError::BadExternalId);
                }
                if external_id == self.external_id {
                    vec![]
                } else {
                    vec![E::GroupExternalIdChanged(GroupExternalIdChanged {
                        external_id,
                    })]
                }
            }
        })
    }
}

impl Aggregate for Group {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = GroupCommand;
    type Event = GroupEvent;
    type Error = GroupError;
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
            GroupEvent::GroupCreated(e) => {
                self.exists = true;
                self.organization_id = e.organization_id;
                self.name = e.name;
            }
            GroupEvent::GroupRenamed(e) => self.name = e.name,
            GroupEvent::GroupMemberAdded(e) => {
                self.members.insert(e.user_id);
            }
            GroupEvent::GroupMemberRemoved(e) => {
                self.members.remove(&e.user_id);
            }
            GroupEvent::GroupDeleted(_) => {
                self.deleted = true;
                self.members.clear();
            }
            GroupEvent::GroupExternalIdChanged(e) => self.external_id = e.external_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use GroupCommand as C;
    use GroupEvent as E;

    fn created() -> E {
        E::GroupCreated(GroupCreated {
            organization_id: "org".into(),
            name: "Quantum team".into(),
        })
    }

    #[test]
    fn a_group_holds_members_of_its_own_organization_once() {
        TestFramework::<Group>::with(())
            .given(vec![created()])
            .when(C::AddMember {
                user_id: "u1".into(),
                member_of: ["org".to_owned()].into(),
            })
            .then_expect_events(vec![E::GroupMemberAdded(GroupMemberAdded {
                user_id: "u1".into(),
            })]);
        TestFramework::<Group>::with(())
            .given(vec![created()])
            .when(C::AddMember {
                user_id: "u2".into(),
                member_of: ["other".to_owned()].into(),
            })
            .then_expect_error(GroupError::NotInOrganization);
        TestFramework::<Group>::with(())
            .given(vec![
                created(),
                E::GroupMemberAdded(GroupMemberAdded {
                    user_id: "u1".into(),
                }),
            ])
            .when(C::AddMember {
                user_id: "u1".into(),
                member_of: ["org".to_owned()].into(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_deleted_group_takes_no_more_commands() {
        TestFramework::<Group>::with(())
            .given(vec![created(), E::GroupDeleted(GroupDeleted {})])
            .when(C::Rename { name: "x".into() })
            .then_expect_error(GroupError::NotFound);
        TestFramework::<Group>::with(())
            .given_no_previous_events()
            .when(C::Create {
                organization_id: "org".into(),
                name: " \u{7} ".into(),
            })
            .then_expect_error(GroupError::BadName);
    }
}
