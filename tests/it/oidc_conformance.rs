//! The OpenID provider driven by a client not written here: `tests/oidc` (Python `authlib`,
//! tokens checked with `PyJWT` against the JWKS), against a real embedded server.

use std::process::Command;

use crate::harness::*;

#[test]
fn an_independent_oidc_client_passes_the_conformance_suite() {
    let dir = temp_dir("oidc");
    let server = Server::embedded(&dir);
    let (id, secret) = bootstrap_credentials(&dir);
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(repo_root().join("tests/oidc"))
        .env("QUANTUS_URL", server.url())
        .env("QUANTUS_CLIENT_ID", id)
        .env("QUANTUS_CLIENT_SECRET", secret)
        .output()
        .expect("python3 is needed for the OIDC conformance suite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the conformance suite failed (are tests/oidc/requirements.txt installed?):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed"), "{stdout}");
}
