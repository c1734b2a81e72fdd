//! The event index: for every event type, what it records, the aggregate command that decides
//! it, and what leads there (an HTTP operation, a page of the sign-in flow, or a process no
//! request starts). `docs/events.md` is generated from it with the read models that consume each
//! event (`quantus docs events`).
//!
//! Typed where the compiler can link it: each entry is keyed by its payload type (so its name
//! and aggregate come from the event enum), and each command is checked to be a variant of the
//! named command type. A unit test checks that every catalogued event has exactly one entry; the
//! integration test `events_index` checks every operation against `/openapi.json`, every page
//! against the router, and the committed `docs/events.md` against [`markdown`].

use std::fmt::Write as _;

use crate::audit::checkpoint::*;
use crate::commercial::{contract::*, customer::*, invoice::*, usage::*};
use crate::events::{EventEnum, EventPayload};
use crate::evidence::{bundle::*, job::*, retention::*};
use crate::identity::{
    access_policy::*, client::*, grant::*, group::*, passkey::*, saml::*, scim_token::*,
    session::*, signin::*, totp::*, user::*,
};
use crate::licensing::{crypto_policy::*, keyring::*, license::*};
use crate::organization::*;
use crate::schema::{event_enums, BoundedContext};

/// What leads to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An operation of `/openapi.json`, as "METHOD /path"; a `{name}` segment of the document
    /// may be written as the value it dispatches on (`POST /v1/users/{id}/disable`).
    Api(&'static str),
    /// A browser form outside the OpenAPI document (sign-in, consent, invite, device pages), as
    /// "METHOD /path" of the router.
    Page(&'static str),
    /// No request of its own: a process manager following the log, a scheduler, the first start.
    Process(&'static str),
}

/// One command that records an event, and what leads to it.
#[derive(Debug, Clone, Copy)]
pub struct RecordedBy {
    /// The aggregate's command (`UserCommand::Register`), or, for an aggregate that records
    /// what it is given, the record itself (`AccessDecided`).
    pub command: &'static str,
    pub via: &'static [Via],
}

/// One event type in the index.
#[derive(Debug, Clone, Copy)]
pub struct IndexEntry {
    pub aggregate: &'static str,
    pub event_type: &'static str,
    /// What the event records, in a line.
    pub description: &'static str,
    pub recorded_by: &'static [RecordedBy],
}

impl IndexEntry {
    /// The entry of the event whose payload is `P`.
    const fn of<P: EventPayload>(
        description: &'static str,
        recorded_by: &'static [RecordedBy],
    ) -> Self {
        Self {
            aggregate: <P::Enum as EventEnum>::AGGREGATE,
            event_type: P::NAME,
            description,
            recorded_by,
        }
    }
}

/// A command's name, checked by the compiler to be a variant of the command type (or the type,
/// for aggregates that record what they are given).
macro_rules! cmd {
    ($ty:ident $(:: $variant:ident)?) => {{
        const _: fn($ty) -> bool = |c| matches!(c, $ty $(:: $variant)? { .. });
        concat!(stringify!($ty) $(, "::", stringify!($variant))?)
    }};
}

macro_rules! by {
    ($($ty:ident $(:: $variant:ident)? => $via:expr),+ $(,)?) => {
        &[$(RecordedBy { command: cmd!($ty $(:: $variant)?), via: $via }),+]
    };
}

use Via::{Api, Page, Process};

const SIGN_IN: &[Via] = &[
    Page("POST /oauth2/login"),
    Page("POST /oauth2/login/second-factor"),
    Page("POST /oauth2/login/passkey"),
];

/// Every event type, with its command and what leads there.
pub const INDEX: &[IndexEntry] = &[
    // Organization
    IndexEntry::of::<OrganizationCreated>(
        "A tenant organization was created.",
        by![OrganizationCommand::Create => &[Api("POST /v1/organizations"), Process("`quantus serve`, first start: the platform organization")]],
    ),
    IndexEntry::of::<OrganizationRenamed>(
        "The organization's name changed.",
        by![OrganizationCommand::Rename => &[Api("PATCH /v1/organizations/{id}")]],
    ),
    IndexEntry::of::<OrganizationSuspended>(
        "The organization was suspended, with a reason.",
        by![OrganizationCommand::Suspend => &[Api("POST /v1/organizations/{id}/suspend")]],
    ),
    IndexEntry::of::<OrganizationReactivated>(
        "A suspended organization is active again.",
        by![OrganizationCommand::Reactivate => &[Api("POST /v1/organizations/{id}/reactivate")]],
    ),
    // Keyring
    IndexEntry::of::<KeyGenerated>(
        "A signing key was generated for a purpose (its public half; the private half is sealed in the keystore).",
        by![KeyringCommand::Generate => &[Api("POST /v1/keys/rotate"), Api("POST /v1/keys/{kid}/compromise"), Process("`quantus serve`, first start: one key per purpose")]],
    ),
    IndexEntry::of::<KeyActivated>(
        "A key became its purpose's active signing key.",
        by![KeyringCommand::Activate => &[Api("POST /v1/keys/rotate"), Api("POST /v1/keys/{kid}/compromise"), Process("`quantus serve`, first start")]],
    ),
    IndexEntry::of::<KeyRotated>(
        "The active key of a purpose was replaced by another.",
        by![KeyringCommand::Activate => &[Api("POST /v1/keys/rotate"), Api("POST /v1/keys/{kid}/compromise")]],
    ),
    IndexEntry::of::<KeyRetired>(
        "A key stops signing; what it signed still verifies.",
        by![KeyringCommand::Retire => &[Api("POST /v1/keys/{kid}/retire")]],
    ),
    IndexEntry::of::<KeyCompromised>(
        "A key was marked compromised as of an instant, with a reason.",
        by![KeyringCommand::Compromise => &[Api("POST /v1/keys/{kid}/compromise")]],
    ),
    // CryptoPolicy
    IndexEntry::of::<AlgorithmRuleSet>(
        "The crypto policy's rule for an algorithm (may sign, may verify, until when).",
        by![CryptoPolicyCommand::SetRule => &[Api("PUT /v1/crypto/policy/{algorithm}"), Process("`quantus serve`, first start")]],
    ),
    IndexEntry::of::<PurposeSignerSet>(
        "The algorithm a signing purpose uses.",
        by![CryptoPolicyCommand::SetPurposeSigner => &[Process("`quantus serve`, first start")]],
    ),
    // License
    IndexEntry::of::<LicenseIssued>(
        "The terms of a licence, as issued or renewed.",
        by![LicenseCommand::Issue => &[Api("POST /v1/licenses"), Api("PUT /v1/licenses/{id}")]],
    ),
    IndexEntry::of::<LicenseActivated>(
        "A machine activated the licence (one of its activations taken).",
        by![LicenseCommand::Activate => &[Api("POST /v1/licenses/{id}/activate")]],
    ),
    IndexEntry::of::<LicenseDeactivated>(
        "A machine gave its activation back.",
        by![LicenseCommand::Deactivate => &[Api("POST /v1/licenses/{id}/deactivate")]],
    ),
    IndexEntry::of::<LicenseSuspended>(
        "The licence was suspended, for a reason.",
        by![LicenseCommand::Suspend => &[Api("POST /v1/licenses/{id}/suspend")]],
    ),
    IndexEntry::of::<LicenseReinstated>(
        "A suspended licence is in force again.",
        by![LicenseCommand::Reinstate => &[Api("POST /v1/licenses/{id}/reinstate")]],
    ),
    IndexEntry::of::<LicenseRenewed>(
        "The licence's expiry moved.",
        by![LicenseCommand::Renew => &[Api("POST /v1/licenses/{id}/renew")]],
    ),
    IndexEntry::of::<LicenseRevoked>(
        "The licence was revoked for good; the CRL names it.",
        by![LicenseCommand::Revoke => &[Api("POST /v1/licenses/{id}/revoke")]],
    ),
    // User
    IndexEntry::of::<UserRegistered>(
        "A person or service principal was registered in an organization, with roles (email and name sealed).",
        by![UserCommand::Register => &[Api("POST /v1/users"), Api("POST /scim/v2/Users"), Api("POST /v1/service-principals"), Process("`quantus serve`, first start: the bootstrap admin and the Portal's service principal")]],
    ),
    IndexEntry::of::<UserPasswordSet>(
        "The user's password hash changed (sealed).",
        by![
            UserCommand::SetPassword => &[Api("POST /v1/users/{id}/password"), Api("PUT /scim/v2/Users/{id}"), Api("PATCH /scim/v2/Users/{id}")],
            UserCommand::AcceptInvite => &[Page("POST /oauth2/invite")],
        ],
    ),
    IndexEntry::of::<UserRoleGranted>(
        "The user was given a role in an organization.",
        by![UserCommand::GrantRole => &[Api("POST /v1/users/{id}/grant-role")]],
    ),
    IndexEntry::of::<UserRoleRevoked>(
        "A role of the user in an organization was taken away.",
        by![UserCommand::RevokeRole => &[Api("POST /v1/users/{id}/revoke-role")]],
    ),
    IndexEntry::of::<UserDisabled>(
        "The user can no longer sign in.",
        by![UserCommand::Disable => &[Api("POST /v1/users/{id}/disable"), Api("POST /scim/v2/Users"), Api("PUT /scim/v2/Users/{id}"), Api("PATCH /scim/v2/Users/{id}")]],
    ),
    IndexEntry::of::<UserEnabled>(
        "A disabled user can sign in again.",
        by![UserCommand::Enable => &[Api("POST /v1/users/{id}/enable"), Api("PUT /scim/v2/Users/{id}"), Api("PATCH /scim/v2/Users/{id}")]],
    ),
    IndexEntry::of::<UserErased>(
        "The user's data key was deleted: their personal data is unreadable for good.",
        by![UserCommand::Erase => &[Api("DELETE /v1/users/{id}"), Api("DELETE /scim/v2/Users/{id}")]],
    ),
    IndexEntry::of::<UserProfileChanged>(
        "The user's provisioning profile (SCIM attributes), sealed.",
        by![UserCommand::SetProfile => &[Api("POST /scim/v2/Users"), Api("PUT /scim/v2/Users/{id}"), Api("PATCH /scim/v2/Users/{id}")]],
    ),
    IndexEntry::of::<UserEmailChanged>(
        "The login email moved (a rename by the provisioning client), sealed.",
        by![UserCommand::ChangeEmail => &[Api("PUT /scim/v2/Users/{id}"), Api("PATCH /scim/v2/Users/{id}")]],
    ),
    IndexEntry::of::<UserInvited>(
        "A one-time set-password link was made; only the SHA-256 of its secret is recorded.",
        by![UserCommand::Invite => &[Api("POST /scim/v2/Users")]],
    ),
    IndexEntry::of::<UserInviteAccepted>(
        "The pending invite was used (followed by `UserPasswordSet`); it works no more.",
        by![UserCommand::AcceptInvite => &[Page("POST /oauth2/invite")]],
    ),
    // ScimToken
    IndexEntry::of::<ScimTokenIssued>(
        "A SCIM bearer token for an organization's provisioning client (its SHA-256 only).",
        by![ScimTokenCommand::Issue => &[Api("POST /v1/organizations/{org}/scim-tokens")]],
    ),
    IndexEntry::of::<ScimTokenRevoked>(
        "A SCIM token stops working.",
        by![ScimTokenCommand::Revoke => &[Api("DELETE /v1/organizations/{org}/scim-tokens/{id}")]],
    ),
    // Group
    IndexEntry::of::<GroupCreated>(
        "A group of users was created in an organization.",
        by![GroupCommand::Create => &[Api("POST /v1/groups"), Api("POST /scim/v2/Groups")]],
    ),
    IndexEntry::of::<GroupRenamed>(
        "The group's name changed.",
        by![GroupCommand::Rename => &[Api("PUT /scim/v2/Groups/{id}"), Api("PATCH /scim/v2/Groups/{id}")]],
    ),
    IndexEntry::of::<GroupMemberAdded>(
        "A user joined the group.",
        by![GroupCommand::AddMember => &[Api("POST /v1/groups/{id}/members"), Api("POST /scim/v2/Groups"), Api("PUT /scim/v2/Groups/{id}"), Api("PATCH /scim/v2/Groups/{id}")]],
    ),
    IndexEntry::of::<GroupMemberRemoved>(
        "A user left the group (also when the user is erased).",
        by![GroupCommand::RemoveMember => &[Api("DELETE /v1/groups/{id}/members/{user_id}"), Api("PUT /scim/v2/Groups/{id}"), Api("PATCH /scim/v2/Groups/{id}"), Api("DELETE /v1/users/{id}")]],
    ),
    IndexEntry::of::<GroupDeleted>(
        "The group was deleted.",
        by![GroupCommand::Delete => &[Api("DELETE /v1/groups/{id}"), Api("DELETE /scim/v2/Groups/{id}")]],
    ),
    IndexEntry::of::<GroupExternalIdChanged>(
        "The identifier the provisioning client (SCIM `externalId`) gives the group.",
        by![GroupCommand::SetExternalId => &[Api("POST /scim/v2/Groups"), Api("PUT /scim/v2/Groups/{id}"), Api("PATCH /scim/v2/Groups/{id}")]],
    ),
    // Client
    IndexEntry::of::<ClientRegistered>(
        "An OAuth client (web app or service principal) was registered; its secret only as a digest.",
        by![ClientCommand::Register => &[Api("POST /v1/clients"), Api("POST /v1/service-principals"), Process("`quantus serve`, first start: the consoles' and bootstrap clients")]],
    ),
    IndexEntry::of::<ClientSecretRotated>(
        "The client's secret was replaced (digest only).",
        by![ClientCommand::RotateSecret => &[Api("POST /v1/clients/{id}/secret")]],
    ),
    IndexEntry::of::<ClientDisabled>(
        "The client can no longer get tokens.",
        by![ClientCommand::Disable => &[Api("POST /v1/clients/{id}/disable")]],
    ),
    // Grant
    IndexEntry::of::<AuthorizationCodeIssued>(
        "An authorization code was issued to a client for a signed-in person (digest only).",
        by![GrantCommand::IssueCode => &[Api("GET /oauth2/authorize"), Page("POST /oauth2/authorize"), Page("POST /oauth2/consent"), Page("POST /oauth2/login"), Page("POST /oauth2/login/second-factor"), Page("POST /oauth2/login/passkey")]],
    ),
    IndexEntry::of::<DeviceAuthorizationStarted>(
        "A device asked for authorization (RFC 8628); the codes as digests.",
        by![GrantCommand::StartDevice => &[Api("POST /oauth2/device_authorization")]],
    ),
    IndexEntry::of::<DeviceAuthorizationApproved>(
        "The person approved the device's request.",
        by![GrantCommand::ApproveDevice => &[Page("POST /device")]],
    ),
    IndexEntry::of::<DeviceAuthorizationDenied>(
        "The person denied the device's request.",
        by![GrantCommand::DenyDevice => &[Page("POST /device")]],
    ),
    IndexEntry::of::<TokensIssued>(
        "Tokens were issued on a grant (code, client credentials or device): the access token's id, a refresh token's digest.",
        by![
            GrantCommand::RedeemCode => &[Api("POST /oauth2/token")],
            GrantCommand::IssueClientCredentials => &[Api("POST /oauth2/token")],
            GrantCommand::RedeemDevice => &[Api("POST /oauth2/token")],
        ],
    ),
    IndexEntry::of::<TokensRefreshed>(
        "A refresh token was used and replaced (rotation).",
        by![GrantCommand::Refresh => &[Api("POST /oauth2/token")]],
    ),
    IndexEntry::of::<GrantRevoked>(
        "The grant and every token from it stop working.",
        by![GrantCommand::Revoke => &[Api("POST /oauth2/revoke"), Api("GET /oauth2/logout"), Api("DELETE /v1/me/sessions/{session}"), Api("DELETE /v1/users/{id}/sessions/{session}"), Api("POST /saml/slo")]],
    ),
    // Session
    IndexEntry::of::<SessionStarted>(
        "A person signed in: a browser session at QSA began.",
        by![SessionCommand::Start => SIGN_IN],
    ),
    IndexEntry::of::<SessionEnded>(
        "The session ended (sign-out, revocation).",
        by![SessionCommand::End => &[Api("GET /oauth2/logout"), Page("POST /oauth2/logout"), Api("DELETE /v1/me/sessions/{session}"), Api("DELETE /v1/users/{id}/sessions/{session}"), Api("GET /saml/slo"), Api("POST /saml/slo")]],
    ),
    // SignInAttempt, Consent
    IndexEntry::of::<SignInSucceeded>(
        "A sign-in succeeded, with the factors used (audit trail).",
        by![SignInEvent::SignInSucceeded => SIGN_IN],
    ),
    IndexEntry::of::<SignInFailed>(
        "A sign-in failed, and why (audit trail; throttling counts these).",
        by![SignInEvent::SignInFailed => SIGN_IN],
    ),
    IndexEntry::of::<ConsentGranted>(
        "A person consented to a client's scopes.",
        by![ConsentGranted => &[Page("POST /oauth2/consent")]],
    ),
    // TotpAuthenticator
    IndexEntry::of::<TotpEnrollmentStarted>(
        "A TOTP secret was made for the person (sealed), not yet confirmed.",
        by![TotpCommand::Start => &[Api("POST /v1/me/totp")]],
    ),
    IndexEntry::of::<TotpEnrolled>(
        "The person confirmed the authenticator with a code; recovery codes as digests.",
        by![TotpCommand::Confirm => &[Api("POST /v1/me/totp/confirm")]],
    ),
    IndexEntry::of::<TotpCodeAccepted>(
        "A TOTP code was accepted (its time step, so it is not accepted twice).",
        by![TotpCommand::Accept => &[Page("POST /oauth2/login/second-factor")]],
    ),
    IndexEntry::of::<TotpRecoveryCodeUsed>(
        "A recovery code was used instead of a code; it works no more.",
        by![TotpCommand::UseRecoveryCode => &[Page("POST /oauth2/login/second-factor")]],
    ),
    IndexEntry::of::<TotpRecoveryCodesRegenerated>(
        "A new set of recovery codes replaces the unused ones (the old codes stop working).",
        by![TotpCommand::RegenerateRecoveryCodes => &[Api("POST /v1/me/recovery-codes")]],
    ),
    IndexEntry::of::<TotpRemoved>(
        "The authenticator was removed (by the person or an administrator's reset).",
        by![TotpCommand::Remove => &[Api("DELETE /v1/me/totp"), Api("DELETE /v1/users/{id}/totp")]],
    ),
    // AccessPolicy, AccessDecision
    IndexEntry::of::<AccessRuleSet>(
        "A conditional-access rule of the organization was set.",
        by![AccessPolicyCommand::Set => &[Api("PUT /v1/access-policies/{org}/rules/{name}")]],
    ),
    IndexEntry::of::<AccessRuleRemoved>(
        "A conditional-access rule was removed.",
        by![AccessPolicyCommand::Remove => &[Api("DELETE /v1/access-policies/{org}/rules/{name}")]],
    ),
    IndexEntry::of::<AccessDecided>(
        "One conditional-access decision, for the audit trail (recorded when the organization has rules).",
        by![AccessDecided => &[Page("POST /oauth2/login"), Page("POST /oauth2/login/second-factor"), Page("POST /oauth2/login/passkey"), Api("GET /oauth2/authorize"), Api("POST /oauth2/token"), Api("GET /saml/sso"), Api("POST /saml/sso")]],
    ),
    // PasskeyCredentials
    IndexEntry::of::<PasskeyRegistered>(
        "A passkey (WebAuthn credential, sealed) was registered for the person.",
        by![PasskeyCommand::Register => &[Api("POST /v1/me/passkeys")]],
    ),
    IndexEntry::of::<PasskeyUsed>(
        "A passkey signed a sign-in (its counter, against cloned authenticators).",
        by![PasskeyCommand::Use => &[Page("POST /oauth2/login/passkey"), Page("POST /oauth2/login/second-factor")]],
    ),
    IndexEntry::of::<PasskeyRemoved>(
        "The person removed a passkey.",
        by![PasskeyCommand::Remove => &[Api("DELETE /v1/me/passkeys/{id}")]],
    ),
    // SamlServiceProvider, SamlSigningKeys, SamlExchange
    IndexEntry::of::<SamlServiceProviderRegistered>(
        "A SAML service provider was registered for an organization.",
        by![SamlServiceProviderCommand::Register => &[Api("POST /v1/saml/service-providers"), Api("POST /v1/saml/service-providers/metadata")]],
    ),
    IndexEntry::of::<SamlServiceProviderChanged>(
        "The service provider's settings changed.",
        by![SamlServiceProviderCommand::Change => &[Api("PUT /v1/saml/service-providers/{id}")]],
    ),
    IndexEntry::of::<SamlServiceProviderRemoved>(
        "The service provider was removed.",
        by![SamlServiceProviderCommand::Remove => &[Api("DELETE /v1/saml/service-providers/{id}")]],
    ),
    IndexEntry::of::<SamlSigningKeyAdded>(
        "A SAML signing key (its certificate) was added; the first one when first needed.",
        by![SamlSigningKeysCommand::Add => &[Api("POST /v1/saml/signing-keys/rotate"), Api("GET /saml/metadata"), Api("GET /saml/sso")]],
    ),
    IndexEntry::of::<SamlSigningKeyRetired>(
        "A SAML signing key was retired.",
        by![SamlSigningKeysCommand::Retire => &[Api("POST /v1/saml/signing-keys/{kid}/retire")]],
    ),
    IndexEntry::of::<SamlAssertionIssued>(
        "An assertion was issued to a service provider for a signed-in person.",
        by![SamlExchangeCommand::RecordAssertion => &[Api("GET /saml/sso"), Api("POST /saml/sso")]],
    ),
    IndexEntry::of::<SamlLogoutCompleted>(
        "A SAML single logout was carried out.",
        by![SamlExchangeCommand::RecordLogout => &[Api("GET /saml/slo"), Api("POST /saml/slo")]],
    ),
    // LogCheckpoint
    IndexEntry::of::<LogCheckpointSigned>(
        "A signed tree head of the log (size, root) was recorded.",
        by![LogCheckpointSigned => &[Api("POST /v1/audit/checkpoints"), Process("the checkpoint scheduler (every N events or T seconds)")]],
    ),
    // Job
    IndexEntry::of::<JobSubmitted>(
        "A job was submitted to a backend (admitted against hard quotas first).",
        by![JobCommand::Submit => &[Api("POST /v1/jobs")]],
    ),
    IndexEntry::of::<JobStarted>(
        "The job started running.",
        by![JobCommand::Start => &[Api("POST /v1/jobs/{id}/start")]],
    ),
    IndexEntry::of::<JobCompleted>(
        "The job finished, with its metrics.",
        by![JobCommand::Complete => &[Api("POST /v1/jobs/{id}/complete")]],
    ),
    IndexEntry::of::<JobFailed>(
        "The job failed, and why.",
        by![JobCommand::Fail => &[Api("POST /v1/jobs/{id}/fail")]],
    ),
    IndexEntry::of::<JobCancelled>(
        "The job was cancelled.",
        by![JobCommand::Cancel => &[Api("POST /v1/jobs/{id}/cancel")]],
    ),
    IndexEntry::of::<ArtifactStored>(
        "An artifact's bytes were stored and hashed (digest, size, object key).",
        by![JobCommand::StoreArtifact => &[Api("PUT /v1/jobs/{id}/artifacts/{name}")]],
    ),
    IndexEntry::of::<ArtifactPurged>(
        "Retention deleted an artifact's bytes (the record and its digest stay).",
        by![JobCommand::PurgeArtifact => &[Api("POST /v1/retention/sweep"), Process("the retention sweep scheduler")]],
    ),
    // EvidenceBundle
    IndexEntry::of::<EvidenceBundleCreated>(
        "A signed evidence bundle of a job (manifest, checkpoint, proofs) was made.",
        by![EvidenceBundleCreated => &[Api("POST /v1/jobs/{id}/evidence")]],
    ),
    // RetentionPolicy
    IndexEntry::of::<RetentionRuleSet>(
        "How long a job class's artifacts are kept.",
        by![RetentionCommand::SetRule => &[Api("PUT /v1/retention/{org}/rules/{job_class}")]],
    ),
    IndexEntry::of::<LegalHoldPlaced>(
        "A legal hold stops retention from deleting the organization's artifacts.",
        by![RetentionCommand::PlaceHold => &[Api("POST /v1/retention/{org}/legal-hold")]],
    ),
    IndexEntry::of::<LegalHoldReleased>(
        "The legal hold was released.",
        by![RetentionCommand::ReleaseHold => &[Api("DELETE /v1/retention/{org}/legal-hold")]],
    ),
    // Customer
    IndexEntry::of::<CustomerRegistered>(
        "A customer record (billing contact, currency) for an organization.",
        by![CustomerCommand::Register => &[Api("POST /v1/customers")]],
    ),
    IndexEntry::of::<CustomerContactChanged>(
        "The customer's billing contact changed.",
        by![CustomerCommand::ChangeContact => &[Api("POST /v1/customers/{id}/contact")]],
    ),
    // Contract
    IndexEntry::of::<ContractDrafted>(
        "A contract was drafted: term, line items with prices, quotas and limits.",
        by![ContractCommand::Draft => &[Api("POST /v1/contracts")]],
    ),
    IndexEntry::of::<ContractRevised>(
        "The draft's terms were revised.",
        by![ContractCommand::Revise => &[Api("POST /v1/contracts/{id}/revise")]],
    ),
    IndexEntry::of::<ContractSent>(
        "The contract was sent to the customer for signature.",
        by![ContractCommand::Send => &[Api("POST /v1/contracts/{id}/send")]],
    ),
    IndexEntry::of::<ContractSigned>(
        "The customer signed the contract.",
        by![ContractCommand::Sign => &[Api("POST /v1/contracts/{id}/sign")]],
    ),
    IndexEntry::of::<ContractActivated>(
        "The contract is in force, with the licence plan QuantumLock carries out.",
        by![ContractCommand::Activate => &[Api("POST /v1/contracts/{id}/activate")]],
    ),
    IndexEntry::of::<ContractAmended>(
        "The contract in force was amended, with the new licence plan.",
        by![ContractCommand::Amend => &[Api("POST /v1/contracts/{id}/amend")]],
    ),
    IndexEntry::of::<ContractTerminated>(
        "The contract was terminated early; its licences are to be revoked.",
        by![ContractCommand::Terminate => &[Api("POST /v1/contracts/{id}/terminate")]],
    ),
    IndexEntry::of::<ContractExpired>(
        "The contract reached its end date.",
        by![ContractCommand::Expire => &[Api("POST /v1/contracts/{id}/expire"), Process("the contract expiry scheduler")]],
    ),
    IndexEntry::of::<ContractLicenseFailed>(
        "QuantumLock refused a step of the licence plan for good (for example: the licence terms are invalid).",
        by![ContractCommand::RecordLicenseFailure => &[Process("process manager `ContractLicensing`, following the log")]],
    ),
    IndexEntry::of::<ContractLicensePending>(
        "A step of the licence plan did not happen for a reason that can pass; it is tried again later.",
        by![ContractCommand::RecordLicensePending => &[Process("process manager `ContractLicensing`, following the log")]],
    ),
    IndexEntry::of::<ContractLicenseCarriedOut>(
        "QuantumLock carried out a step of the licence plan (the licence is issued, renewed or revoked as planned).",
        by![ContractCommand::RecordLicenseCarriedOut => &[Process("process manager `ContractLicensing`, following the log")]],
    ),
    // UsageMeter
    IndexEntry::of::<UsageRecorded>(
        "Usage of a metric in an organization's month (from a finished job's metrics, once per source).",
        by![UsageCommand::Record => &[Process("process manager `UsageMetering`, after `JobCompleted`")]],
    ),
    IndexEntry::of::<QuotaExceeded>(
        "Recorded usage went past a quota of the contract (with its enforcement).",
        by![UsageCommand::Record => &[Process("process manager `UsageMetering`, after `JobCompleted`")]],
    ),
    // Invoice
    IndexEntry::of::<InvoiceIssued>(
        "An invoice with its lines (prices and usage of a period) was issued.",
        by![InvoiceCommand::Issue => &[Api("POST /v1/invoices"), Process("the billing run scheduler")]],
    ),
    IndexEntry::of::<InvoiceSent>(
        "The invoice went to the billing provider (built-in or Stripe).",
        by![InvoiceCommand::RecordSent => &[Api("POST /v1/invoices/{id}/send"), Process("the billing run scheduler")]],
    ),
    IndexEntry::of::<InvoicePaid>(
        "The invoice was paid.",
        by![InvoiceCommand::RecordPaid => &[Api("POST /v1/invoices/{id}/pay"), Api("POST /v1/invoices/{id}/refresh"), Api("POST /v1/billing/webhooks/stripe")]],
    ),
    IndexEntry::of::<InvoicePaymentFailed>(
        "A payment of the invoice failed.",
        by![InvoiceCommand::RecordPaymentFailed => &[Api("POST /v1/invoices/{id}/refresh"), Api("POST /v1/billing/webhooks/stripe")]],
    ),
    IndexEntry::of::<InvoiceVoided>(
        "The invoice was voided.",
        by![InvoiceCommand::Void => &[Api("POST /v1/invoices/{id}/void"), Api("POST /v1/invoices/{id}/refresh"), Api("POST /v1/billing/webhooks/stripe")]],
    ),
];

/// The index entry of an event type.
pub fn entry(event_type: &str) -> Option<&'static IndexEntry> {
    INDEX.iter().find(|e| e.event_type == event_type)
}

/// `docs/events.md`: one row per event, grouped by bounded context, in catalogue order.
/// `read_models` is (model name, the event types it consumes), from `quantus-projections`.
pub fn markdown(read_models: &[(&str, &[&str])]) -> String {
    let mut out = String::from(
        "# Event index\n\n\
         Generated by `quantus docs events` from the event catalogue (`domain/src/index.rs`) and\n\
         the read models' consumed events (`projections/src/consumes.rs`); do not edit by hand.\n\
         For each event: what it records, the aggregate command that decides it, what leads\n\
         there (an operation of `/openapi.json`, a page of the sign-in flow, or a process), and\n\
         the read models it changes. Schemas: `schemas/<Event>.v1.json`.\n",
    );
    for context in BoundedContext::ALL {
        let _ = write!(
            out,
            "\n## {context:?} (`{}`)\n\n\
             | Event | Aggregate | Records | Command | Via | Read models |\n\
             |---|---|---|---|---|---|\n",
            context.topic()
        );
        for (aggregate, names) in event_enums() {
            if BoundedContext::of_aggregate(aggregate) != Some(context) {
                continue;
            }
            for name in names {
                let Some(e) = entry(name) else {
                    let _ = writeln!(out, "| `{name}` | {aggregate} | (not in the index) | | | |");
                    continue;
                };
                let commands: Vec<String> = e
                    .recorded_by
                    .iter()
                    .map(|r| format!("`{}`", r.command))
                    .collect();
                let via: Vec<String> = e
                    .recorded_by
                    .iter()
                    .flat_map(|r| r.via)
                    .map(|v| match v {
                        Via::Api(op) => format!("`{op}`"),
                        Via::Page(op) => format!("`{op}` (page)"),
                        Via::Process(words) => words.to_string(),
                    })
                    .fold(Vec::new(), |mut seen, v| {
                        if !seen.contains(&v) {
                            seen.push(v);
                        }
                        seen
                    });
                let models: Vec<String> = read_models
                    .iter()
                    .filter(|(_, consumed)| consumed.contains(name))
                    .map(|(model, _)| format!("`{model}`"))
                    .collect();
                let _ = writeln!(
                    out,
                    "| `{name}` | {aggregate} | {} | {} | {} | {} |",
                    e.description,
                    commands.join("<br>"),
                    via.join("<br>"),
                    if models.is_empty() {
                        "none".to_owned()
                    } else {
                        models.join(", ")
                    }
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn every_catalogued_event_has_exactly_one_index_entry() {
        let mut entries: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for e in INDEX {
            *entries.entry((e.aggregate, e.event_type)).or_default() += 1;
        }
        let twice: Vec<_> = entries.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "indexed more than once: {twice:?}");
        let missing: Vec<(&str, &str)> = event_enums()
            .into_iter()
            .flat_map(|(aggregate, names)| names.iter().map(move |n| (aggregate, *n)))
            .filter(|key| !entries.contains_key(key))
            .collect();
        assert!(
            missing.is_empty(),
            "events without an entry in domain/src/index.rs: {missing:?}"
        );
        for e in INDEX {
            assert!(
                !e.description.trim().is_empty(),
                "{} has no description",
                e.event_type
            );
            assert!(
                e.recorded_by.iter().all(|r| !r.via.is_empty()),
                "{}: a command without what leads to it",
                e.event_type
            );
            assert!(
                !e.description.contains('|'),
                "{}: `|` breaks the table",
                e.event_type
            );
        }
    }

    #[test]
    fn the_markdown_has_a_row_per_event_with_its_read_models() {
        let md = markdown(&[(
            "organizations",
            &["OrganizationCreated", "OrganizationRenamed"],
        )]);
        let row = md
            .lines()
            .find(|l| l.starts_with("| `OrganizationRenamed`"))
            .expect("a row");
        assert!(row.contains("`OrganizationCommand::Rename`"), "{row}");
        assert!(row.contains("`PATCH /v1/organizations/{id}`"), "{row}");
        assert!(row.ends_with("| `organizations` |"), "{row}");
        let suspended = md
            .lines()
            .find(|l| l.starts_with("| `OrganizationSuspended`"))
            .expect("a row");
        assert!(suspended.ends_with("| none |"), "{suspended}");
        let rows = md.lines().filter(|l| l.starts_with("| `")).count();
        let events: usize = event_enums().iter().map(|(_, n)| n.len()).sum();
        assert_eq!(rows, events);
        assert!(!md.contains("(not in the index)"));
    }
}
