//! The generated OpenAPI document, served at `/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{
    access, audit, commercial, events, evidence, identity, jobs, licensing, oauth, organizations,
    passkeys, saml, scim, totp, verification, Problem,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Quantus API", description = "Identity, licences, evidence and contracts on one event-sourced log. Access tokens come from the OpenID provider described at /.well-known/openid-configuration."),
    paths(
        organizations::create, organizations::list, organizations::show, organizations::rename,
        organizations::suspend, organizations::reactivate, events::list, events::history,
        licensing::policy, licensing::set_rule, licensing::keys, licensing::rotate, licensing::retire,
        licensing::compromise, licensing::issue, licensing::list, licensing::show, licensing::status,
        licensing::file, licensing::transition, licensing::crl, licensing::sign_digest,
        licensing::verify_digest,
        identity::create_user, identity::list_users, identity::show_user, identity::delete_user, identity::user_action,
        identity::create_service_principal, identity::create_client, identity::list_clients, identity::show_client,
        identity::rotate_secret, identity::disable_client, identity::create_group, identity::list_groups, identity::my_sessions, identity::revoke_my_session, identity::user_sessions, identity::revoke_user_session, identity::show_group,
        identity::add_member, identity::remove_member, identity::delete_group,
        audit::list, audit::sign, audit::inclusion, audit::consistency,
        audit::log_checkpoint, audit::log_tile, audit::export, verification::verify,
        jobs::submit, jobs::list, jobs::show, jobs::transition, jobs::upload, jobs::download,
        jobs::retention, jobs::set_rule, jobs::place_hold, jobs::release_hold, jobs::sweep,
        evidence::create, evidence::of_job, evidence::show, evidence::export, evidence::dsse, evidence::verify,
        licensing::issue_with_id,
        totp::start, totp::status, totp::confirm, totp::remove_own, totp::reset, totp::regenerate_recovery_codes,
        access::show, access::set, access::remove, access::evaluate,
        passkeys::options, passkeys::register, passkeys::list, passkeys::remove,
        scim::issue_token, scim::list_tokens, scim::revoke_token,
        scim::list_users, scim::create_user, scim::search_users, scim::show_user,
        scim::replace_user, scim::patch_user, scim::delete_user, scim::list_groups,
        scim::create_group, scim::search_groups, scim::show_group, scim::replace_group,
        scim::patch_group, scim::delete_group, scim::search_all, scim::service_provider_config,
        scim::resource_types, scim::resource_type, scim::schemas, scim::schema,
        saml::register_from_metadata, saml::create_provider, saml::list_providers, saml::get_provider,
        saml::put_provider, saml::delete_provider, saml::list_keys, saml::rotate_key,
        saml::retire_key, saml::metadata, saml::sso_redirect, saml::sso_post, saml::slo_redirect,
        saml::slo_post,
        oauth::discovery, oauth::jwks, oauth::token, oauth::introspect, oauth::revoke,
        oauth::par, oauth::device_authorization, oauth::userinfo, oauth::authorize,
        oauth::logout,
        commercial::register_customer, commercial::list_customers, commercial::show_customer,
        commercial::change_contact, commercial::draft_contract, commercial::list_contracts,
        commercial::show_contract, commercial::contract_transition, commercial::entitlements,
        commercial::check_entitlement, commercial::issue_invoice, commercial::list_invoices,
        commercial::show_invoice, commercial::invoice_action, commercial::stripe_webhook,
        commercial::my_contracts, commercial::my_entitlements, commercial::my_licenses, commercial::my_invoices,
        commercial::my_evidence,
    ),
    components(schemas(Problem, scim::ScimErrorBody)),
    modifiers(&BearerAuth, &ActionRoutes, &ProblemMediaType, &InputResponses, &ScimResponses, &RequestBounds, &AuthResponses, &UniqueOperationIds),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A QSA access token as `Authorization: Bearer <token>`. A DPoP-bound token (RFC 9449; `token_type` DPoP, `cnf.jkt`) goes as `Authorization: DPoP <token>` with a `DPoP` header: a proof JWT (typ dpop+jwt, ES256 or Ed25519 (`EdDSA` or `Ed25519`), the client's public `jwk`) with `htm`, `htu` (this URL without query), `iat`, a unique `jti` and `ath` (base64url SHA-256 of the token); refusals are 401 with `WWW-Authenticate: DPoP error=\"invalid_dpop_proof\"` or `invalid_token`, `algs=\"ES256 EdDSA Ed25519\"`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "scim",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A SCIM token of one organization (`POST /v1/organizations/{org}/scim-tokens`, shown once) as `Authorization: Bearer <token>`; it reaches only `/scim/v2` and that organization's Users and Groups.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The `/{id}/{action}` routes: for each, the body type its handler reads and, per action,
/// the fields of it that action reads (`!`: required).
type Actions = &'static [(&'static str, &'static [&'static str])];
const ACTION_ROUTES: &[(&str, &str, &str, Actions)] = &[
    (
        "/v1/licenses/{id}/{action}",
        "TransitionBody",
        "License",
        &[
            ("activate", &["fingerprint!"]),
            ("deactivate", &["fingerprint!"]),
            ("suspend", &["reason!"]),
            ("reinstate", &[]),
            ("renew", &["expires_at!"]),
            ("revoke", &["reason!"]),
        ],
    ),
    (
        "/v1/jobs/{id}/{action}",
        "JobTransition",
        "Job",
        &[
            ("start", &[]),
            ("complete", &["result_summary", "metrics"]),
            ("fail", &["error!"]),
            ("cancel", &["reason"]),
        ],
    ),
    (
        "/v1/users/{id}/{action}",
        "UserActionBody",
        "User",
        &[
            ("password", &["password!"]),
            ("disable", &["reason"]),
            ("enable", &[]),
            ("grant-role", &["organization_id!", "role!"]),
            ("revoke-role", &["organization_id!", "role!"]),
        ],
    ),
    (
        "/v1/contracts/{id}/{action}",
        "ContractTransition",
        "Contract",
        &[
            ("revise", &["line_items!", "starts_at!", "ends_at!"]),
            ("send", &[]),
            ("sign", &["signed_by!"]),
            ("activate", &[]),
            ("amend", &["reason!", "line_items!", "ends_at!"]),
            ("terminate", &["reason!"]),
            ("expire", &[]),
        ],
    ),
    (
        "/v1/invoices/{id}/{action}",
        "InvoiceActionBody",
        "Invoice",
        &[
            ("send", &[]),
            ("refresh", &[]),
            ("pay", &["reference!"]),
            ("void", &["reason!"]),
        ],
    ),
];

/// One handler serves each `/{id}/{action}` route, but a client calls one state transition at
/// a time: the document has one operation per action, with a body schema of exactly the
/// fields that action reads (`{Noun}{Action}Body`), in place of the shared body type.
struct ActionRoutes;

impl Modify for ActionRoutes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::request_body::RequestBodyBuilder;
        use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, Required, Schema};
        let components = openapi.components.get_or_insert_with(Default::default);
        for (template, body, noun, actions) in ACTION_ROUTES {
            let Some(op) = openapi
                .paths
                .paths
                .remove(*template)
                .and_then(|item| item.post)
            else {
                continue;
            };
            let shared = match components.schemas.remove(*body) {
                Some(RefOr::T(Schema::Object(o))) => o.properties,
                _ => Default::default(),
            };
            for (action, reads) in *actions {
                let mut op = op.clone();
                if let Some(params) = op.parameters.as_mut() {
                    params.retain(|p| p.name != "action");
                }
                let suffix = action.replace('-', "_");
                op.operation_id = op.operation_id.map(|id| format!("{id}_{suffix}"));
                op.summary = Some(format!("{noun}: {action}"));
                op.request_body = None;
                if !reads.is_empty() {
                    let mut schema = ObjectBuilder::new();
                    let mut required = false;
                    for field in *reads {
                        let name = field.trim_end_matches('!');
                        if let Some(property) = shared.get(name) {
                            schema = schema.property(name, property.clone());
                        }
                        if field.ends_with('!') {
                            schema = schema.required(name);
                            required = true;
                        }
                    }
                    let pascal: String = action
                        .split('-')
                        .map(|w| w[..1].to_uppercase() + &w[1..])
                        .collect();
                    let name = format!("{noun}{pascal}Body");
                    components
                        .schemas
                        .insert(name.clone(), RefOr::T(Schema::Object(schema.build())));
                    op.request_body = Some(
                        RequestBodyBuilder::new()
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(Ref::from_schema_name(name)))
                                    .build(),
                            )
                            .required(Some(if required {
                                Required::True
                            } else {
                                Required::False
                            }))
                            .build(),
                    );
                }
                let path = template.replace("{action}", action);
                openapi.paths.paths.entry(path).or_default().post = Some(op);
            }
        }
    }
}

/// The SCIM service provider's paths.
const SCIM: &str = "/scim/v2/";

fn is_scim(path: &str) -> bool {
    path.starts_with(SCIM)
}

/// What every SCIM operation can answer and no handler declares: 401 without a live SCIM
/// token, and on writes 403 when the organization's quota is spent; as SCIM errors (RFC 7644
/// §3.12), not problem documents.
struct ScimResponses;

impl Modify for ScimResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, op) in operations(openapi) {
            if !is_scim(path) {
                continue;
            }
            let responses = &mut op.responses.responses;
            responses.entry("401".into()).or_insert_with(|| {
                scim_error_response("no live SCIM token (`WWW-Authenticate: Bearer`)")
            });
            if op.request_body.is_some() && !path.ends_with(".search") {
                responses
                    .entry("403".into())
                    .or_insert_with(|| scim_error_response("the organization's quota is spent"));
            }
        }
    }
}

fn scim_error_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/scim+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ScimErrorBody")))
                .build(),
        )
        .build()
        .into()
}

/// What every route shares and no handler declares: the body limits and timeouts
/// (`crate::bodies`) and `Idempotency-Key` on authenticated POSTs (`crate::idempotency`).
struct RequestBounds;

impl Modify for RequestBounds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
        use utoipa::openapi::Required;
        let add = |op: &mut Operation, status: &str, description: &str| {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| problem_response(description));
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            for op in [&mut item.put, &mut item.patch].into_iter().flatten() {
                add(op, "413", "the request body is larger than the limit");
                add(op, "408", "the request body stalled or arrived too slowly");
            }
            let Some(op) = item.post.as_mut() else {
                continue;
            };
            add(op, "413", "the request body is larger than the limit");
            add(op, "408", "the request body stalled or arrived too slowly");
            // SCIM writes are not replayed by key: SCIM clients retry by ETag instead.
            if op.security.is_none() || is_scim(path) {
                continue;
            }
            op.parameters.get_or_insert_with(Vec::new).push(
                ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "IETF httpapi Idempotency-Key (a quoted string): the request is carried out once per caller and key; a retry with the same body gets the first answer again (header Idempotent-Replayed: true), another body 422, a retry while the first runs 409. Kept one day (QUANTUS_IDEMPOTENCY_KEY_SECONDS).",
                    ))
                    .schema(Some(
                        utoipa::openapi::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::Type::String)
                            .max_length(Some(257)),
                    ))
                    .build(),
            );
            add(
                op,
                "400",
                "the Idempotency-Key is not a quoted string of printable ASCII",
            );
            add(
                op,
                "409",
                "a request with this Idempotency-Key is still in progress",
            );
            add(
                op,
                "422",
                "this Idempotency-Key was used for a different request",
            );
        }
    }
}

fn problem_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
        .into()
}

/// Every operation of the document, whatever its method, with its path.
fn operations(
    openapi: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (&String, &mut utoipa::openapi::path::Operation)> {
    openapi.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        .map(move |op| (path, op))
    })
}

/// A handler's `body = Problem` is documented as `application/json` by utoipa, but a problem
/// is sent as `application/problem+json` (RFC 9457; `Problem::into_response`).
struct ProblemMediaType;

impl Modify for ProblemMediaType {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        for (_, op) in operations(openapi) {
            for response in op.responses.responses.values_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                let is_problem = matches!(
                    response.content.get("application/json").and_then(|c| c.schema.as_ref()),
                    Some(RefOr::Ref(r)) if r.ref_location == "#/components/schemas/Problem"
                );
                if !is_problem {
                    continue;
                }
                if let Some(content) = response.content.shift_remove("application/json") {
                    response
                        .content
                        .insert("application/problem+json".into(), content);
                }
            }
        }
    }
}

/// What the extractors in front of every `/v1` handler answer and no handler declares: a JSON
/// body that does not parse (400), is not `application/json` (415) or does not fit its type
/// (422) (`ApiJson`); a query string that does not fit (400, `ApiQuery`); a path naming
/// nothing the caller's tenant holds (404: another tenant's resource is not found either).
struct InputResponses;

impl Modify for InputResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        for (path, op) in operations(openapi) {
            // The protocol endpoints (OAuth, SAML, SCIM) answer their own errors.
            if !path.starts_with("/v1/") {
                continue;
            }
            let json_body = op
                .request_body
                .as_ref()
                .is_some_and(|b| b.content.contains_key("application/json"));
            let has = |place: ParameterIn| {
                op.parameters
                    .iter()
                    .flatten()
                    .any(|p| p.parameter_in == place && p.name != "min_position")
            };
            let (query, in_path) = (has(ParameterIn::Query), has(ParameterIn::Path));
            let responses = &mut op.responses.responses;
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem_response(description));
            };
            if json_body {
                add("400", "the body is not well-formed JSON");
                add("415", "the body is not sent as application/json");
                add(
                    "422",
                    "the body lacks a field or has one of the wrong type or value",
                );
            }
            if query {
                add("400", "a query parameter is malformed or unknown");
            }
            if in_path {
                add("404", "no such resource in the caller's tenant");
            }
        }
    }
}

/// Every operation with a security requirement answers 401 without a valid token and 403
/// when the token lacks the scope or the tenant; every operation that waits for a log
/// position (`min_position`) answers 400 for a position past the log and 503 (with
/// `Retry-After`) when the read model does not reach it in time; and every operation may be
/// shed with 503 and `Retry-After` (a connection past the cap, a full or slow write queue).
struct AuthResponses;

impl Modify for AuthResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, op) in operations(openapi) {
            // SCIM answers its own errors (`ScimResponses`).
            if is_scim(path) {
                continue;
            }
            let waits = op
                .parameters
                .iter()
                .flatten()
                .any(|p| p.name == "min_position");
            let responses = &mut op.responses.responses;
            if op.security.is_some() {
                responses
                    .entry("401".into())
                    .or_insert_with(|| problem_response("no valid access token"));
                responses.entry("403".into()).or_insert_with(|| {
                    problem_response("the token lacks the scope, role or tenant for this")
                });
            }
            if waits {
                responses.entry("503".into()).or_insert_with(|| {
                    problem_response(
                        "the read model did not reach min_position in time; retry after Retry-After",
                    )
                });
                responses.entry("400".into()).or_insert_with(|| {
                    problem_response("min_position is past the end of the log, or malformed")
                });
            }
            responses.entry("503".into()).or_insert_with(|| {
                problem_response(
                    "overloaded: shed at the connection cap or by the write queue; retry after Retry-After",
                )
            });
        }
    }
}

/// utoipa names an operation after its handler, and handlers in different modules share
/// names (`show`, `list`): prefix each with its first tag, which names the service. A handler
/// serving two methods (`/oauth2/userinfo`) gets the method after its name on the second.
struct UniqueOperationIds;

impl Modify for UniqueOperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut seen = std::collections::HashSet::new();
        for item in openapi.paths.paths.values_mut() {
            for (method, op) in [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
            ] {
                let Some(op) = op.as_mut() else { continue };
                let tag = op
                    .tags
                    .as_ref()
                    .and_then(|t| t.first())
                    .cloned()
                    .unwrap_or_else(|| "quantus".into());
                if let Some(id) = op.operation_id.as_mut() {
                    *id = format!("{tag}_{id}");
                    if !seen.insert(id.clone()) {
                        id.push('_');
                        id.push_str(method);
                        seen.insert(id.clone());
                    }
                }
            }
        }
    }
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
