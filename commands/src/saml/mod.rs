//! QSA as a SAML 2.0 identity provider: service-provider registration, the IdP's RSA signing
//! keys (sealed outside the log, certificates in it), checking AuthnRequests and
//! LogoutRequests, and issuing signed Responses and LogoutResponses. Every sign-on and logout is
//! an audit event (`SamlExchange`).

pub mod xml;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use quantus_domain::identity::access_policy::Strength;
use quantus_domain::identity::saml::{
    provider_id, provider_id_in, NameIdFormat, SamlAssertionIssued, SamlError, SamlExchange,
    SamlExchangeCommand, SamlLogoutCompleted, SamlServiceProvider, SamlServiceProviderCommand,
    SamlServiceProviderSettings, SamlSigningKeyAdded, SamlSigningKeys, SamlSigningKeysCommand,
    SloBinding, UserAttribute, SIGNING_KEYS_ID,
};
use quantus_domain::identity::session::Session;
use quantus_domain::identity::RequestInfo;
use quantus_domain::schema::PLATFORM_TENANT;
use quantus_domain::{Actor, ActorKind, CommandContext};
use quantus_infra::saml_keys::SamlKeys;
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, LiveSession};
use crate::{ClassifyError, CommandBus, CommandError, CommandOutcome};

/// How long an assertion may be presented (SubjectConfirmationData and Conditions).
pub const ASSERTION_SECONDS: i64 = 300;

/// How far a request's `IssueInstant` may be from QSA's clock, either way: the clock skew
/// most SAML stacks allow. Request ids are remembered for this long past their instant, so a
/// replay within the window is refused and one after it fails the instant check.
pub const ISSUE_INSTANT_SKEW_SECONDS: i64 = 180;

impl ClassifyError for SamlError {
    fn classify(&self) -> CommandError {
        match self {
            e if e.is_validation() => CommandError::Invalid(e.to_string()),
            SamlError::NotFound => CommandError::NotFound(self.to_string()),
            e => CommandError::Rejected(e.to_string()),
        }
    }
}

fn storage(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

/// A sign-on QSA agreed to answer, waiting for (or holding) a signed-in person. Sealed into the
/// login page's continuation, so it must carry nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsoRequest {
    pub provider_id: String,
    pub entity_id: String,
    pub acs_url: String,
    /// The AuthnRequest's ID; none when IdP-initiated.
    pub in_response_to: Option<String>,
    pub relay_state: Option<String>,
    #[serde(default)]
    pub force_authn: bool,
    #[serde(default)]
    pub is_passive: bool,
    /// When QSA accepted the request: with `force_authn`, only a sign-in after it counts.
    #[serde(default)]
    pub requested_at: Option<DateTime<Utc>>,
}

/// Why a sign-on request is not answered with an assertion.
#[derive(Debug)]
pub enum SsoRefusal {
    /// Before the SP and its ACS URL are trusted: shown to the person, never sent anywhere.
    Page(CommandError),
    /// A SAML Response with this status, to the SP's registered ACS URL.
    Status(StatusAnswer),
}

/// A status-only Response to send (SAML Core §3.2.2.2).
#[derive(Debug, Clone)]
pub struct StatusAnswer {
    pub request: SsoRequest,
    pub top: &'static str,
    pub sub: Option<&'static str>,
    pub message: String,
}

impl SsoRequest {
    /// A status answer to this request.
    pub fn refuse(
        &self,
        top: &'static str,
        sub: Option<&'static str>,
        message: impl Into<String>,
    ) -> SsoRefusal {
        SsoRefusal::Status(StatusAnswer {
            request: self.clone(),
            top,
            sub,
            message: message.into(),
        })
    }
}

impl From<CommandError> for SsoRefusal {
    fn from(e: CommandError) -> Self {
        SsoRefusal::Page(e)
    }
}

/// The signature of an HTTP-Redirect binding message, as received.
#[derive(Debug, Clone)]
pub struct RedirectSignature {
    /// `SAMLRequest=…&RelayState=…&SigAlg=…`, the raw URL-encoded values.
    pub signed_octets: String,
    pub sig_alg: String,
    pub signature: Vec<u8>,
}

/// How a request arrived.
#[derive(Debug, Clone)]
pub enum Binding {
    Redirect(Option<RedirectSignature>),
    Post,
}

/// A message to POST to the SP (auto-submitting form).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub url: String,
    /// `SAMLResponse` (base64 of the signed XML).
    pub saml_response: String,
    pub relay_state: Option<String>,
    /// The signed XML itself.
    pub xml: String,
    /// HTTP-Redirect binding: the whole signed URL to send the browser to (then
    /// `saml_response` is unused).
    pub redirect_url: Option<String>,
}

/// A service provider as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderView {
    pub id: String,
    pub organization_id: String,
    pub entity_id: String,
    pub name: String,
    #[serde(flatten)]
    pub settings: SamlServiceProviderSettings,
    pub version: u64,
}

#[derive(Clone)]
pub struct Saml {
    bus: CommandBus,
    keys: SamlKeys,
    identity: Identity,
    issuer: String,
}

fn system_ctx(now: DateTime<Utc>) -> CommandContext {
    CommandContext {
        tenant_id: PLATFORM_TENANT.to_owned(),
        actor: Actor {
            kind: ActorKind::System,
            id: "qsa".into(),
        },
        occurred_at: quantus_domain::envelope::truncate_to_micros(now),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: uuid::Uuid::now_v7(),
    }
}

impl Saml {
    pub fn new(bus: CommandBus, keys: SamlKeys, identity: Identity, issuer: &str) -> Self {
        Self {
            bus,
            keys,
            identity,
            issuer: issuer.trim_end_matches('/').to_owned(),
        }
    }

    /// The IdP's entity id: `<issuer>/saml/metadata`.
    pub fn entity_id(&self) -> String {
        format!("{}/saml/metadata", self.issuer)
    }

    /// Where SPs send AuthnRequests: the shared endpoint, or an organization's own (needed
    /// when several organizations registered the same entity id).
    pub fn sso_url(&self, organization: Option<&str>) -> String {
        match organization {
            Some(org) => format!("{}/saml/o/{org}/sso", self.issuer),
            None => format!("{}/saml/sso", self.issuer),
        }
    }

    pub fn slo_url(&self, organization: Option<&str>) -> String {
        match organization {
            Some(org) => format!("{}/saml/o/{org}/slo", self.issuer),
            None => format!("{}/saml/slo", self.issuer),
        }
    }

    // ---- keys ----

    pub async fn signing_keys(&self) -> Result<(SamlSigningKeys, u64), CommandError> {
        self.bus.load::<SamlSigningKeys>(SIGNING_KEYS_ID).await
    }

    /// The key that signs now; the first call on a new platform makes one.
    pub async fn active_key(
        &self,
        now: DateTime<Utc>,
    ) -> Result<SamlSigningKeyAdded, CommandError> {
        let (keys, version) = self.signing_keys().await?;
        if let Some(k) = keys.active() {
            return Ok(k.clone());
        }
        match self.add_key(&system_ctx(now), Some(version), now).await {
            Ok(k) => Ok(k),
            // Another process made the first key at the same time: use theirs.
            Err(CommandError::Concurrency(_)) => self
                .signing_keys()
                .await?
                .0
                .active()
                .cloned()
                .ok_or_else(|| CommandError::Storage("no SAML signing key".into())),
            Err(e) => Err(e),
        }
    }

    async fn add_key(
        &self,
        ctx: &CommandContext,
        expected: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<SamlSigningKeyAdded, CommandError> {
        let new = self
            .keys
            .generate("Quantus QSA SAML signing", now)
            .await
            .map_err(storage)?;
        let added = SamlSigningKeyAdded {
            kid: new.kid,
            alg: "RSA-SHA256".into(),
            certificate: STANDARD.encode(&new.certificate),
            not_before: quantus_domain::envelope::truncate_to_micros(now),
        };
        let mut ctx = ctx.clone();
        ctx.tenant_id = PLATFORM_TENANT.to_owned();
        self.bus
            .execute::<SamlSigningKeys>(
                &ctx,
                SIGNING_KEYS_ID,
                SamlSigningKeysCommand::Add(added.clone()),
                expected,
                &(),
            )
            .await?;
        Ok(added)
    }

    /// Makes a new signing key the active one; the previous one stays in the metadata until
    /// it is retired.
    pub async fn rotate(&self, ctx: &CommandContext) -> Result<SamlSigningKeyAdded, CommandError> {
        self.add_key(ctx, None, ctx.occurred_at).await
    }

    pub async fn retire(
        &self,
        ctx: &CommandContext,
        kid: &str,
    ) -> Result<CommandOutcome, CommandError> {
        let mut ctx = ctx.clone();
        ctx.tenant_id = PLATFORM_TENANT.to_owned();
        self.bus
            .execute::<SamlSigningKeys>(
                &ctx,
                SIGNING_KEYS_ID,
                SamlSigningKeysCommand::Retire {
                    kid: kid.to_owned(),
                },
                None,
                &(),
            )
            .await
    }

    /// The IdP metadata (EntityDescriptor), active key first; with an organization, its own
    /// endpoints.
    pub async fn metadata(
        &self,
        now: DateTime<Utc>,
        organization: Option<&str>,
    ) -> Result<String, CommandError> {
        let active = self.active_key(now).await?;
        let (keys, _) = self.signing_keys().await?;
        let mut certs = vec![active.certificate.clone()];
        certs.extend(
            keys.keys
                .iter()
                .rev()
                .filter(|k| k.kid != active.kid)
                .map(|k| k.certificate.clone()),
        );
        Ok(xml::metadata(
            &self.entity_id(),
            &self.sso_url(organization),
            &self.slo_url(organization),
            &certs,
        ))
    }

    /// Signs an element with the active key.
    async fn sign(
        &self,
        u: &xml::Unsigned,
        key: &SamlSigningKeyAdded,
    ) -> Result<String, CommandError> {
        let sig = self
            .keys
            .sign(&key.kid, u.to_sign().as_bytes())
            .await
            .map_err(storage)?;
        Ok(u.with_signature(&sig, &key.certificate))
    }

    // ---- service providers ----

    pub async fn register(
        &self,
        ctx: &CommandContext,
        organization_id: &str,
        entity_id: &str,
        name: &str,
        settings: SamlServiceProviderSettings,
    ) -> Result<(String, CommandOutcome), CommandError> {
        // Entity ids are unique per organization: another organization's registration of the
        // same SP neither blocks this one nor shows through its answer.
        let id = provider_id_in(organization_id, entity_id);
        // A registration made before entity ids were per organization has the old id.
        if let Ok(old) = self.provider(&provider_id(entity_id)).await {
            if old.organization_id == organization_id {
                return Err(SamlError::AlreadyRegistered.classify());
            }
        }
        self.keys
            .index_entity(entity_id, organization_id, &id)
            .await
            .map_err(storage)?;
        let outcome = self
            .bus
            .execute::<SamlServiceProvider>(
                ctx,
                &id,
                SamlServiceProviderCommand::Register {
                    organization_id: organization_id.to_owned(),
                    entity_id: entity_id.to_owned(),
                    name: name.to_owned(),
                    settings,
                },
                None,
                &(),
            )
            .await?;
        Ok((id, outcome))
    }

    pub async fn change(
        &self,
        ctx: &CommandContext,
        id: &str,
        name: &str,
        settings: SamlServiceProviderSettings,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        self.bus
            .execute::<SamlServiceProvider>(
                ctx,
                id,
                SamlServiceProviderCommand::Change {
                    name: name.to_owned(),
                    settings,
                },
                expected,
                &(),
            )
            .await
    }

    pub async fn remove(
        &self,
        ctx: &CommandContext,
        id: &str,
    ) -> Result<CommandOutcome, CommandError> {
        let sp = self.provider(id).await.ok();
        let outcome = self
            .bus
            .execute::<SamlServiceProvider>(ctx, id, SamlServiceProviderCommand::Remove, None, &())
            .await?;
        if let Some(sp) = sp {
            self.keys
                .unindex_entity(&sp.entity_id, &sp.organization_id)
                .await
                .map_err(storage)?;
        }
        Ok(outcome)
    }

    /// A registered (not removed) service provider.
    pub async fn provider(&self, id: &str) -> Result<ProviderView, CommandError> {
        let (sp, version) = self.bus.load::<SamlServiceProvider>(id).await?;
        match (&sp.settings, sp.removed) {
            (Some(settings), false) => Ok(ProviderView {
                id: id.to_owned(),
                organization_id: sp.organization_id.clone(),
                entity_id: sp.entity_id.clone(),
                name: sp.name.clone(),
                settings: settings.clone(),
                version,
            }),
            _ => Err(CommandError::NotFound(format!(
                "no SAML service provider {id}"
            ))),
        }
    }

    /// The live service provider `entity_id` of `organization` (any organization when none:
    /// the shared endpoints, which need the entity id to be registered by one organization).
    pub async fn provider_by_entity_id(
        &self,
        entity_id: &str,
        organization: Option<&str>,
    ) -> Result<ProviderView, CommandError> {
        let mut ids: Vec<String> = self
            .keys
            .entity_providers(entity_id)
            .await
            .map_err(storage)?
            .into_iter()
            .filter(|(org, _)| organization.is_none_or(|o| o == org))
            .map(|(_, id)| id)
            .collect();
        ids.push(provider_id(entity_id));
        ids.dedup();
        let mut found = Vec::new();
        for id in ids {
            match self.provider(&id).await {
                Ok(sp) if organization.is_none_or(|o| o == sp.organization_id) => {
                    if !found.iter().any(|f: &ProviderView| f.id == sp.id) {
                        found.push(sp)
                    }
                }
                Ok(_) | Err(CommandError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match found.len() {
            0 => Err(CommandError::Invalid(format!(
                "{entity_id:?} is not a registered SAML service provider"
            ))),
            1 => Ok(found.remove(0)),
            _ => Err(CommandError::Invalid(format!(
                "{entity_id:?} is registered by more than one organization: send its requests to \
                 the organization's own endpoints (<issuer>/saml/o/<organization id>/sso and /slo, \
                 listed in <issuer>/saml/o/<organization id>/metadata)"
            ))),
        }
    }

    fn check_signature(
        sp: &ProviderView,
        binding: &Binding,
        has_xml_signature: bool,
        what: &str,
    ) -> Result<(), CommandError> {
        let Some(cert) = &sp.settings.certificate else {
            return Ok(());
        };
        match binding {
            Binding::Redirect(Some(sig)) => {
                if sig.sig_alg != xml::RSA_SHA256 {
                    return Err(CommandError::Invalid(format!(
                        "the {what}'s SigAlg must be {}",
                        xml::RSA_SHA256
                    )));
                }
                xml::verify_rsa_sha256(cert, sig.signed_octets.as_bytes(), &sig.signature)
                    .map_err(|e| CommandError::Invalid(format!("the {what}'s signature: {e}")))
            }
            Binding::Redirect(None) => Err(CommandError::Invalid(format!(
                "{} registered a certificate: its {what} must be signed",
                sp.entity_id
            ))),
            Binding::Post if has_xml_signature => Err(CommandError::Invalid(format!(
                "XML-signed {what}s over HTTP-POST are not supported yet: send signed requests over HTTP-Redirect"
            ))),
            Binding::Post => Err(CommandError::Invalid(format!(
                "{} registered a certificate: its {what} must be signed",
                sp.entity_id
            ))),
        }
    }

    /// Checks an AuthnRequest: a registered issuer, a registered ACS URL, this IdP as
    /// destination, and a valid signature when the SP registered a certificate (failures are
    /// shown to the person); then, answered to the SP as a SAML status, an `IssueInstant`
    /// within [`ISSUE_INSTANT_SKEW_SECONDS`], an id not seen in that window (a replay is
    /// `Requester`/`RequestDenied`), the binding and the NameID format.
    pub async fn check_authn_request(
        &self,
        request_xml: &str,
        binding: &Binding,
        relay_state: Option<String>,
        organization: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<SsoRequest, SsoRefusal> {
        let req = xml::parse_request(request_xml).map_err(CommandError::Invalid)?;
        if req.kind != "AuthnRequest" {
            return Err(CommandError::Invalid(format!(
                "expected an AuthnRequest, got {}",
                req.kind
            ))
            .into());
        }
        let issuer = req
            .issuer
            .as_deref()
            .ok_or_else(|| CommandError::Invalid("the AuthnRequest has no Issuer".into()))?;
        let sp = self.provider_by_entity_id(issuer, organization).await?;
        Self::check_signature(&sp, binding, req.has_xml_signature, "AuthnRequest")?;
        let endpoint = self.sso_url(organization);
        if let Some(d) = &req.destination {
            if d != &endpoint {
                return Err(CommandError::Invalid(format!(
                    "the AuthnRequest's Destination {d:?} is not {endpoint}"
                ))
                .into());
            }
        }
        let acs_url = match &req.acs_url {
            Some(u) if sp.settings.acs_urls.contains(u) => u.clone(),
            Some(u) => {
                return Err(CommandError::Invalid(format!(
                    "the ACS URL {u:?} is not registered for {}",
                    sp.entity_id
                ))
                .into())
            }
            None => sp.settings.acs_urls[0].clone(),
        };
        let checked = SsoRequest {
            provider_id: sp.id.clone(),
            entity_id: sp.entity_id.clone(),
            acs_url,
            in_response_to: Some(req.id.clone()),
            relay_state,
            force_authn: req.force_authn,
            is_passive: req.is_passive,
            requested_at: Some(now),
        };
        // From here on the SP and its ACS URL are known: errors go back to it as a status.
        let issued = match req
            .issue_instant
            .as_deref()
            .map(DateTime::parse_from_rfc3339)
        {
            Some(Ok(t)) => t.with_timezone(&Utc),
            Some(Err(_)) => {
                return Err(checked.refuse(
                    xml::STATUS_REQUESTER,
                    None,
                    "the AuthnRequest's IssueInstant is not an xs:dateTime",
                ))
            }
            None => {
                return Err(checked.refuse(
                    xml::STATUS_REQUESTER,
                    None,
                    "the AuthnRequest has no IssueInstant",
                ))
            }
        };
        let skew = Duration::seconds(ISSUE_INSTANT_SKEW_SECONDS);
        if issued > now + skew || issued < now - skew {
            return Err(checked.refuse(
                xml::STATUS_REQUESTER,
                Some(xml::STATUS_REQUEST_DENIED),
                format!(
                    "the AuthnRequest's IssueInstant {} is more than {ISSUE_INSTANT_SKEW_SECONDS} s from the IdP's clock ({})",
                    xml::instant(issued),
                    xml::instant(now)
                ),
            ));
        }
        let fresh = self
            .keys
            .remember_request_id(
                &sp.id,
                &req.id,
                (issued + skew + Duration::seconds(1)).timestamp(),
                now.timestamp(),
            )
            .await
            .map_err(storage)?;
        if !fresh {
            return Err(checked.refuse(
                xml::STATUS_REQUESTER,
                Some(xml::STATUS_REQUEST_DENIED),
                format!(
                    "the AuthnRequest {} was already received (a replay)",
                    req.id
                ),
            ));
        }
        if let Some(b) = &req.protocol_binding {
            if b != xml::BINDING_POST {
                return Err(checked.refuse(
                    xml::STATUS_REQUESTER,
                    Some(xml::STATUS_UNSUPPORTED_BINDING),
                    format!("only the HTTP-POST binding is supported for responses, not {b}"),
                ));
            }
        }
        if let Some(f) = &req.name_id_format {
            if f != sp.settings.name_id_format.urn() && f != NameIdFormat::Unspecified.urn() {
                return Err(checked.refuse(
                    xml::STATUS_REQUESTER,
                    Some(xml::STATUS_INVALID_NAMEID_POLICY),
                    format!(
                        "NameID format {f} is not the one registered for {} ({})",
                        sp.entity_id,
                        sp.settings.name_id_format.urn()
                    ),
                ));
            }
        }
        Ok(checked)
    }

    /// An IdP-initiated sign-on to a registered SP (its first ACS URL).
    pub async fn idp_initiated(
        &self,
        entity_id: &str,
        relay_state: Option<String>,
        organization: Option<&str>,
    ) -> Result<SsoRequest, CommandError> {
        let sp = self.provider_by_entity_id(entity_id, organization).await?;
        Ok(SsoRequest {
            provider_id: sp.id,
            entity_id: sp.entity_id,
            acs_url: sp.settings.acs_urls[0].clone(),
            in_response_to: None,
            relay_state,
            force_authn: false,
            is_passive: false,
            requested_at: None,
        })
    }

    /// A signed status-only Response to the SP's (registered) ACS URL.
    pub async fn status_response(
        &self,
        answer: &StatusAnswer,
        now: DateTime<Utc>,
    ) -> Result<Outgoing, CommandError> {
        let req = &answer.request;
        // The registration may have changed since the request was checked.
        let sp = self.provider(&req.provider_id).await?;
        if !sp.settings.acs_urls.contains(&req.acs_url) {
            return Err(CommandError::Invalid(format!(
                "the ACS URL {:?} is no longer registered",
                req.acs_url
            )));
        }
        let key = self.active_key(now).await?;
        let response = xml::status_response(
            &xml::new_id(),
            &self.entity_id(),
            &req.acs_url,
            req.in_response_to.as_deref(),
            now,
            answer.top,
            answer.sub,
            &answer.message,
        );
        let signed = self.sign(&response, &key).await?;
        Ok(Outgoing {
            url: req.acs_url.clone(),
            saml_response: STANDARD.encode(signed.as_bytes()),
            relay_state: req.relay_state.clone(),
            xml: signed,
            redirect_url: None,
        })
    }

    /// The signed Response for a signed-in person, recorded as `SamlAssertionIssued` first.
    pub async fn respond(
        &self,
        ctx: &CommandContext,
        req: &SsoRequest,
        session: &LiveSession,
        groups: &[String],
    ) -> Result<Outgoing, CommandError> {
        let now = ctx.occurred_at;
        // The registration may have changed since the request was checked.
        let sp = self.provider(&req.provider_id).await?;
        if !sp.settings.acs_urls.contains(&req.acs_url) {
            return Err(CommandError::Invalid(format!(
                "the ACS URL {:?} is no longer registered",
                req.acs_url
            )));
        }
        if !self
            .identity
            .may_use_client(&session.user_id, &sp.organization_id)
            .await?
        {
            return Err(CommandError::Rejected(
                "this service provider belongs to another organization".into(),
            ));
        }
        let profile = self.identity.user_profile(&session.user_id).await?;
        let name_id = match sp.settings.name_id_format {
            NameIdFormat::EmailAddress => profile.email.clone().ok_or_else(|| {
                CommandError::Rejected("the user has no email address to send".into())
            })?,
            NameIdFormat::Persistent => pairwise_id(&sp.id, &session.user_id),
            NameIdFormat::Unspecified => session.user_id.clone(),
        };
        let mut attributes = Vec::new();
        for (name, source) in &sp.settings.attributes {
            let values = match source {
                UserAttribute::Email => profile.email.iter().cloned().collect(),
                UserAttribute::Name => profile.name.iter().cloned().collect(),
                UserAttribute::UserId => vec![session.user_id.clone()],
                UserAttribute::OrganizationId => vec![sp.organization_id.clone()],
                UserAttribute::Roles => profile
                    .memberships
                    .get(&sp.organization_id)
                    .map(|r| {
                        r.iter()
                            .map(|x| {
                                serde_json::to_value(x)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_owned))
                                    .unwrap_or_default()
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                UserAttribute::Groups => groups.to_vec(),
            };
            attributes.push((name.clone(), values));
        }
        let authn_context = if Strength::of_amr(&session.amr) >= Strength::Mfa {
            xml::AC_MFA
        } else {
            xml::AC_PASSWORD_PROTECTED
        };
        let key = self.active_key(now).await?;
        let idp = self.entity_id();
        let assertion_id = xml::new_id();
        let response_id = xml::new_id();
        let assertion = xml::assertion(&xml::AssertionParts {
            id: &assertion_id,
            idp_entity_id: &idp,
            sp_entity_id: &sp.entity_id,
            acs_url: &req.acs_url,
            in_response_to: req.in_response_to.as_deref(),
            name_id: &name_id,
            name_id_format: sp.settings.name_id_format.urn(),
            now,
            not_on_or_after: now + Duration::seconds(ASSERTION_SECONDS),
            auth_instant: session.auth_time,
            session_index: &session.id,
            authn_context,
            attributes: &attributes,
        });
        let signed_assertion = self.sign(&assertion, &key).await?;
        let response = xml::response(
            &response_id,
            &idp,
            &req.acs_url,
            req.in_response_to.as_deref(),
            now,
            &signed_assertion,
        );
        let signed = self.sign(&response, &key).await?;
        self.bus
            .execute::<SamlExchange>(
                ctx,
                &response_id,
                SamlExchangeCommand::RecordAssertion(SamlAssertionIssued {
                    service_provider_id: sp.id.clone(),
                    entity_id: sp.entity_id.clone(),
                    user_id: session.user_id.clone(),
                    session_id: session.id.clone(),
                    in_response_to: req.in_response_to.clone(),
                    acs_url: req.acs_url.clone(),
                    name_id_format: sp.settings.name_id_format,
                    authn_context: authn_context.to_owned(),
                    attributes: attributes.iter().map(|(n, _)| n.clone()).collect(),
                }),
                None,
                &(),
            )
            .await?;
        Ok(Outgoing {
            url: req.acs_url.clone(),
            saml_response: STANDARD.encode(signed.as_bytes()),
            relay_state: req.relay_state.clone(),
            xml: signed,
            redirect_url: None,
        })
    }

    /// SP-initiated single logout: checks the LogoutRequest, ends the browser's QSA session
    /// (or, for a signed request, the session its SessionIndex names) and its grants, records
    /// `SamlLogoutCompleted`, and answers a signed LogoutResponse when the SP registered where.
    #[allow(clippy::too_many_arguments)]
    pub async fn logout(
        &self,
        ctx: &CommandContext,
        request_xml: &str,
        binding: &Binding,
        relay_state: Option<String>,
        browser_session: Option<LiveSession>,
        request: RequestInfo,
        organization: Option<&str>,
    ) -> Result<Option<Outgoing>, CommandError> {
        let now = ctx.occurred_at;
        let req = xml::parse_request(request_xml).map_err(CommandError::Invalid)?;
        if req.kind != "LogoutRequest" {
            return Err(CommandError::Invalid(format!(
                "expected a LogoutRequest, got {}",
                req.kind
            )));
        }
        let issuer = req
            .issuer
            .as_deref()
            .ok_or_else(|| CommandError::Invalid("the LogoutRequest has no Issuer".into()))?;
        let sp = self.provider_by_entity_id(issuer, organization).await?;
        Self::check_signature(&sp, binding, req.has_xml_signature, "LogoutRequest")?;
        let signed = sp.settings.certificate.is_some();
        let target = match browser_session {
            Some(s) => Some((s.id, s.user_id, s.organization_id)),
            None if signed => match &req.session_index {
                Some(index) => {
                    let (session, _) = self.bus.load::<Session>(index).await?;
                    session
                        .started
                        .as_ref()
                        .filter(|_| session.is_live(now))
                        .map(|s| (index.clone(), s.user_id.clone(), s.organization_id.clone()))
                }
                None => None,
            },
            None => None,
        };
        if let Some((session_id, user_id, org)) = &target {
            let mut user_ctx = ctx.clone();
            user_ctx.tenant_id = org.clone();
            user_ctx.actor = Actor {
                kind: ActorKind::User,
                id: user_id.clone(),
            };
            self.identity
                .revoke_session_grants(&user_ctx, session_id, request.clone())
                .await?;
            self.identity
                .end_session(&user_ctx, session_id, request)
                .await?;
        }
        let response_id = xml::new_id();
        self.bus
            .execute::<SamlExchange>(
                ctx,
                &response_id,
                SamlExchangeCommand::RecordLogout(SamlLogoutCompleted {
                    service_provider_id: sp.id.clone(),
                    entity_id: sp.entity_id.clone(),
                    in_response_to: req.id.clone(),
                    session_id: target.as_ref().map(|t| t.0.clone()),
                    user_id: target.as_ref().map(|t| t.1.clone()),
                }),
                None,
                &(),
            )
            .await?;
        let Some(slo) = sp.settings.slo_url.clone() else {
            return Ok(None);
        };
        let key = self.active_key(now).await?;
        let response = xml::logout_response(&response_id, &self.entity_id(), &slo, &req.id, now);
        // The binding the SP registered for its SLO URL, else the one its request used
        // (python3-saml, for one, takes logout responses over HTTP-Redirect only).
        let redirect = match sp.settings.slo_binding {
            Some(SloBinding::HttpRedirect) => true,
            Some(SloBinding::HttpPost) => false,
            None => matches!(binding, Binding::Redirect(_)),
        };
        if redirect {
            let plain = response.unsigned();
            let message = xml::deflate_redirect(&plain);
            let query = xml::redirect_query("SAMLResponse", &message, relay_state.as_deref());
            let sig = self
                .keys
                .sign(&key.kid, query.as_bytes())
                .await
                .map_err(storage)?;
            let sig: String = STANDARD
                .encode(sig)
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
                    b => format!("%{b:02X}"),
                })
                .collect();
            let sep = if slo.contains('?') { '&' } else { '?' };
            return Ok(Some(Outgoing {
                redirect_url: Some(format!("{slo}{sep}{query}&Signature={sig}")),
                url: slo,
                saml_response: message,
                relay_state,
                xml: plain,
            }));
        }
        let signed = self.sign(&response, &key).await?;
        Ok(Some(Outgoing {
            url: slo,
            saml_response: STANDARD.encode(signed.as_bytes()),
            relay_state,
            xml: signed,
            redirect_url: None,
        }))
    }

    /// Signs a Response for the benchmark and tests without recording anything: the work of one
    /// sign-on (two RSA signatures, the XML), nothing else.
    pub async fn sign_sample(&self, now: DateTime<Utc>) -> Result<String, CommandError> {
        let key = self.active_key(now).await?;
        let idp = self.entity_id();
        let attributes = vec![("mail".to_owned(), vec!["ada@example.com".to_owned()])];
        let assertion = xml::assertion(&xml::AssertionParts {
            id: &xml::new_id(),
            idp_entity_id: &idp,
            sp_entity_id: "https://sp.example.com",
            acs_url: "https://sp.example.com/acs",
            in_response_to: Some("_req"),
            name_id: "ada@example.com",
            name_id_format: NameIdFormat::EmailAddress.urn(),
            now,
            not_on_or_after: now + Duration::seconds(ASSERTION_SECONDS),
            auth_instant: now,
            session_index: "s",
            authn_context: xml::AC_PASSWORD_PROTECTED,
            attributes: &attributes,
        });
        let a = self.sign(&assertion, &key).await?;
        let r = xml::response(
            &xml::new_id(),
            &idp,
            "https://sp.example.com/acs",
            Some("_req"),
            now,
            &a,
        );
        self.sign(&r, &key).await
    }
}

/// A persistent NameID: an opaque id, stable per (SP, user) and different for each SP (derived
/// from ids, so not a secret; it only keeps SPs from correlating people by NameID).
pub fn pairwise_id(provider_id: &str, user_id: &str) -> String {
    const NS: uuid::Uuid = uuid::Uuid::from_u128(0x5a17_9d4c_3e2b_4a1f_8c6d_7e8f_9a0b_1c2d);
    uuid::Uuid::new_v5(&NS, format!("{provider_id}\0{user_id}").as_bytes()).to_string()
}
