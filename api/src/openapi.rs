//! The generated OpenAPI document, served at `/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{
    access, audit, events, evidence, identity, jobs, licensing, mfa, organizations, passkeys,
    portal, scim, Problem,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Quantus API", description = "Identity, licences, evidence and contracts on one event-sourced log. Access tokens come from the OpenID provider described at /.well-known/openid-configuration."),
    paths(
        organizations::create, organizations::list, organizations::show, organizations::rename,
        organizations::suspend, organizations::reactivate, events::list,
        licensing::policy, licensing::set_rule, licensing::keys, licensing::rotate, licensing::retire,
        licensing::compromise, licensing::issue, licensing::list, licensing::show, licensing::status,
        licensing::file, licensing::transition, licensing::crl, licensing::sign_digest,
        licensing::verify_digest,
        identity::create_user, identity::list_users, identity::show_user, identity::delete_user, identity::user_action,
        identity::create_service_principal, identity::create_client, identity::show_client,
        identity::rotate_secret, identity::disable_client, identity::create_group, identity::show_group,
        identity::add_member, identity::remove_member, identity::delete_group,
        audit::list, audit::sign, audit::inclusion, audit::consistency,
        jobs::submit, jobs::list, jobs::show, jobs::transition, jobs::upload, jobs::download,
        jobs::retention, jobs::set_rule, jobs::place_hold, jobs::release_hold, jobs::sweep,
        evidence::create, evidence::of_job, evidence::show, evidence::export, evidence::dsse, evidence::verify,
        licensing::issue_with_id,
        mfa::start, mfa::status, mfa::confirm, mfa::remove_own, mfa::reset,
        access::show, access::set, access::remove, access::evaluate,
        passkeys::options, passkeys::register, passkeys::list, passkeys::remove,
        scim::issue_token, scim::revoke_token,
        portal::register_customer, portal::list_customers, portal::show_customer,
        portal::change_contact, portal::draft_contract, portal::list_contracts,
        portal::show_contract, portal::contract_transition, portal::entitlements,
        portal::check_entitlement, portal::issue_invoice, portal::list_invoices,
        portal::show_invoice, portal::invoice_action, portal::stripe_webhook,
        portal::my_contracts, portal::my_entitlements, portal::my_licenses, portal::my_invoices,
        portal::my_evidence,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
