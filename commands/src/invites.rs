//! Invites: a one-time, expiring set-password link for people provisioned without a password
//! (SCIM), delivered through a pluggable [`InviteSender`].
//!
//! The link carries `<user id>.<secret>` (256 random bits) in its fragment, which browsers do
//! not send to servers, so no request log sees it; only the secret's SHA-256 is recorded
//! (`UserInvited`). Setting the password through it records `UserInviteAccepted` and
//! `UserPasswordSet` in one command; a newer invite replaces an older one.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use futures::future::BoxFuture;
use quantus_domain::identity::user::{UserCommand, UserStatus};
use quantus_domain::CommandContext;
use quantus_infra::credentials::{random_secret, secret_digest, secret_matches, write_secret};
use serde::Serialize;

use crate::identity::Identity;
use crate::{CommandError, CommandOutcome};

/// How long an invite link works unless configured otherwise: three days.
pub const DEFAULT_INVITE_SECONDS: i64 = 72 * 3600;

/// One invitation to deliver. `link` holds the secret: a sender keeps it from logs.
#[derive(Debug, Clone, Serialize)]
pub struct InviteMessage {
    pub user_id: String,
    pub organization_id: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub link: String,
    pub expires_at: DateTime<Utc>,
}

/// Delivers invitations: [`OutboxSender`] records them for the operator; an SMTP sender is
/// another implementation of this trait.
pub trait InviteSender: Send + Sync {
    fn send<'a>(&'a self, message: &'a InviteMessage) -> BoxFuture<'a, Result<(), String>>;
}

/// Records each message as a JSON file (mode 0600) in a folder for the operator to forward;
/// the log line names the user and the file, never the link.
pub struct OutboxSender {
    dir: PathBuf,
}

impl OutboxSender {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl InviteSender for OutboxSender {
    fn send<'a>(&'a self, message: &'a InviteMessage) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let dir = self.dir.clone();
            let name = format!(
                "{}-invite-{}.json",
                message.expires_at.format("%Y%m%dT%H%M%S"),
                uuid::Uuid::now_v7()
            );
            let text = serde_json::to_string_pretty(message).map_err(|e| e.to_string())?;
            let path = dir.join(name);
            let written = path.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)?;
                write_secret(&written, &text).map_err(|e| std::io::Error::other(e.to_string()))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            tracing::info!(user_id = %message.user_id, file = %path.display(), "invite recorded in the outbox");
            Ok(())
        })
    }
}

/// Why a link does not set a password. One answer for every kind of bad link, so that a link
/// reveals nothing about accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteRefusal {
    /// Unknown, used, replaced or expired.
    InvalidLink,
    /// The password does not meet the rules (the message says which).
    Password(String),
}

#[derive(Clone)]
pub struct Invites {
    identity: Identity,
    sender: Arc<dyn InviteSender>,
    lifetime: Duration,
}

impl Invites {
    pub fn new(identity: Identity, sender: Arc<dyn InviteSender>, lifetime_seconds: i64) -> Self {
        Self {
            identity,
            sender,
            // At most a year: a longer link is a standing password.
            lifetime: Duration::seconds(lifetime_seconds.clamp(1, 366 * 86400)),
        }
    }

    /// Records a new invite for `user_id` (replacing any earlier one) and delivers the link to
    /// `email`. A failed delivery is an error; inviting again makes a new link.
    pub async fn invite(
        &self,
        ctx: &CommandContext,
        user_id: &str,
        organization_id: &str,
        email: &str,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        let secret = random_secret();
        let expires_at = ctx.occurred_at + self.lifetime;
        let outcome = self
            .identity
            .user_command(
                ctx,
                user_id,
                UserCommand::Invite {
                    secret_sha256: secret_digest(&secret),
                    expires_at,
                },
                expected,
            )
            .await?;
        let link = format!(
            "{}/oauth2/invite#{user_id}.{secret}",
            self.identity.issuer()
        );
        let message = InviteMessage {
            user_id: user_id.to_owned(),
            organization_id: organization_id.to_owned(),
            to: email.to_owned(),
            subject: "Set your Quantus password".into(),
            text: format!(
                "An account was made for you. Set your password here before {}:\n{link}\n",
                expires_at.format("%Y-%m-%d %H:%M UTC")
            ),
            link,
            expires_at,
        };
        self.sender
            .send(&message)
            .await
            .map_err(|e| CommandError::Storage(format!("the invite was not delivered: {e}")))?;
        Ok(outcome)
    }

    /// Sets the password of the person a link names, once, before it expires.
    pub async fn accept(
        &self,
        ctx: &CommandContext,
        token: &str,
        password: String,
    ) -> Result<Result<String, InviteRefusal>, CommandError> {
        let Some((id, secret)) = token.trim().split_once('.') else {
            return Ok(Err(InviteRefusal::InvalidLink));
        };
        let Ok(id) = uuid::Uuid::parse_str(id).map(|u| u.to_string()) else {
            return Ok(Err(InviteRefusal::InvalidLink));
        };
        let (user, version) = match self.identity.user(&id).await {
            Ok(u) => u,
            Err(CommandError::NotFound(_)) => return Ok(Err(InviteRefusal::InvalidLink)),
            Err(e) => return Err(e),
        };
        let Some(invite) = user.invite.clone() else {
            return Ok(Err(InviteRefusal::InvalidLink));
        };
        if !matches!(user.status, UserStatus::Active | UserStatus::Disabled)
            || !secret_matches(secret, &invite.secret_sha256)
            || ctx.occurred_at >= invite.expires_at
        {
            return Ok(Err(InviteRefusal::InvalidLink));
        }
        let password_hash = match self.identity.sealed_password(&id, password).await {
            Ok(h) => h,
            Err(CommandError::Invalid(m)) => return Ok(Err(InviteRefusal::Password(m))),
            Err(e) => return Err(e),
        };
        let ctx = CommandContext {
            tenant_id: user.organization_id.clone(),
            ..ctx.clone()
        };
        let command = UserCommand::AcceptInvite {
            secret_sha256: invite.secret_sha256,
            now: ctx.occurred_at,
            password_hash,
        };
        // At the version read: of two uses at once, one wins and the other is refused.
        match self
            .identity
            .user_command(&ctx, &id, command, Some(version))
            .await
        {
            Ok(_) => Ok(Ok(id)),
            Err(
                CommandError::Concurrency(_) | CommandError::Invalid(_) | CommandError::Rejected(_),
            ) => Ok(Err(InviteRefusal::InvalidLink)),
            Err(e) => Err(e),
        }
    }
}
