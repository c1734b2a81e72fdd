//! The login, consent and device pages used as a person would: headless Chromium driven by
//! Playwright (`tests/browser`), against a real embedded server. `scripts/browser.sh`
//! installs Chromium and Playwright; the test fails when they cannot be had. Passkeys are
//! used with Chromium's virtual authenticator (DevTools protocol `WebAuthn` domain).

use std::process::Command;

use crate::harness::*;

#[test]
fn people_use_the_pages_in_a_real_browser() {
    let chromium = chromium();
    // A localhost public URL: browsers allow WebAuthn (passkeys) on it.
    let (server, public) = crate::passkeys::localhost_server("browser", &[]);
    let (id, secret) = bootstrap_credentials(&server.data_dir);
    browser_suite_passes(
        Command::new("node")
            .args(["--test", "pages.test.mjs"])
            .env("QUANTUS_URL", &public)
            .env("QUANTUS_CLIENT_ID", id)
            .env("QUANTUS_CLIENT_SECRET", secret)
            .env("CHROMIUM", chromium),
        5,
    );
}

#[test]
fn developers_browse_the_api_reference_served_by_the_binary() {
    let chromium = chromium();
    let dir = temp_dir("api-reference");
    let server = Server::embedded(&dir);
    browser_suite_passes(
        Command::new("node")
            .args(["--test", "reference.test.mjs"])
            .env("QUANTUS_URL", server.url())
            .env("SCREENSHOTS", repo_root().join("docs/screenshots"))
            .env("CHROMIUM", chromium),
        1,
    );
}
