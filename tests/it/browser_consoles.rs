//! The web consoles used as people would: headless Chromium driven by Playwright
//! (`tests/browser/consoles.test.mjs`) against a real embedded server, signing in through
//! QSA's own pages. Every page is checked with axe-core and saved to `docs/screenshots/`.

use std::process::Command;

use crate::harness::*;

/// Runs one browser suite of `tests/browser` against a fresh embedded server; answers the
/// server (for checks of its log) once every test of the suite passed.
fn run_suite(name: &str, file: &str, tests: usize) -> Server {
    let chromium = chromium();
    // Every page refreshes the session's access token (tokens live 10 minutes; the journey
    // takes seconds), so rotation and the session's compare-and-swap are used throughout.
    let (server, public) =
        crate::passkeys::localhost_server(name, &[("QUANTUS_CONSOLE_REFRESH_SECONDS", "100000")]);
    let (id, secret) = bootstrap_credentials(&server.data_dir);
    let out = Command::new("node")
        .args(["--test", file])
        .current_dir(repo_root().join("tests/browser"))
        .env("QUANTUS_URL", &public)
        .env("QUANTUS_CLIENT_ID", id)
        .env("QUANTUS_CLIENT_SECRET", secret)
        .env("QUANTUS_BIN", bin())
        .env("SCREENSHOTS", repo_root().join("docs/screenshots"))
        .env("CHROMIUM", chromium)
        .output()
        .expect("node is needed for the browser tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(server.data_dir.join("server.log")).unwrap_or_default()
    );
    assert!(
        stdout.contains("# fail 0") && stdout.contains(&format!("# pass {tests}")),
        "{stdout}"
    );
    server
}

/// Tokens stay in the session rows: none reached the server's log (JWTs start with eyJ).
fn no_token_in_the_log(server: &Server) {
    let log = std::fs::read_to_string(server.data_dir.join("server.log")).unwrap_or_default();
    assert!(
        !log.contains("eyJ"),
        "a token reached the server log:\n{log}"
    );
}

#[test]
fn customers_use_the_portal_in_a_real_browser() {
    let server = run_suite("consoles", "consoles.test.mjs", 2);
    // The sessions really refreshed (with rotation, never presenting a spent refresh token,
    // which would have revoked the grant and failed the journey).
    let refreshes = tail_log(&server)
        .iter()
        .filter(|e| e["envelope"]["event_type"] == "TokensRefreshed")
        .count();
    assert!(refreshes >= 10, "only {refreshes} refreshes");
    no_token_in_the_log(&server);
}

#[test]
fn security_admins_use_the_qsa_console_in_a_real_browser() {
    let server = run_suite("qsa-console", "qsa.test.mjs", 2);
    // The journey's step-up is in the log: a sign-in with the second factor.
    let stepped_up = tail_log(&server).iter().any(|e| {
        e["envelope"]["event_type"] == "SignInSucceeded"
            && e["envelope"]["payload"]["amr"]
                .as_array()
                .is_some_and(|a| a.iter().any(|m| m == "mfa"))
    });
    assert!(stepped_up, "no sign-in with a second factor was recorded");
    no_token_in_the_log(&server);
}

#[test]
fn people_register_passkeys_and_replace_recovery_codes_on_the_account_page() {
    let server = run_suite("account-console", "account.test.mjs", 2);
    // The new codes are in the log as digests only (the page showed them; the log must not).
    let regenerated = tail_log(&server)
        .iter()
        .filter(|e| e["envelope"]["event_type"] == "TotpRecoveryCodesRegenerated")
        .count();
    assert_eq!(regenerated, 1);
    no_token_in_the_log(&server);
}

#[test]
fn owners_manage_their_organizations_api_clients_in_the_portal() {
    let server = run_suite("portal-clients", "clients.test.mjs", 1);
    no_token_in_the_log(&server);
}

#[test]
fn operators_draft_several_line_items_and_amend_contracts_in_the_admin_console() {
    let server = run_suite("admin-contracts", "admin_contracts.test.mjs", 2);
    no_token_in_the_log(&server);
}

#[test]
fn operators_see_billing_runs_and_settle_invoices_in_the_admin_console() {
    let server = run_suite("admin-billing", "admin_billing.test.mjs", 1);
    // The payment and the void the operator confirmed are in the log, by the operator.
    let by_person = |event_type: &str| {
        tail_log(&server).iter().any(|e| {
            e["envelope"]["event_type"] == event_type && e["envelope"]["actor"]["kind"] == "user"
        })
    };
    assert!(by_person("InvoicePaid"), "no payment recorded by a person");
    assert!(by_person("InvoiceVoided"), "no void recorded by a person");
    no_token_in_the_log(&server);
}

#[test]
fn operators_see_an_organization_as_of_a_moment_in_the_admin_console() {
    let server = run_suite("admin-as-of", "admin_as_of.test.mjs", 1);
    no_token_in_the_log(&server);
}

#[test]
fn operators_verify_a_range_of_the_event_log_in_the_admin_console() {
    let server = run_suite("admin-verify", "admin_verify.test.mjs", 1);
    no_token_in_the_log(&server);
}
