//! The OpenID provider driven by a client not written here: `tests/oidc` (Python `authlib`,
//! tokens checked with `PyJWT` against the JWKS), against a real server. The embedded run is
//! here; the Postgres + Kafka run is `postgres_kafka::h_*`.

use std::process::Command;

use crate::harness::*;

/// Runs the Python suite against `server`; panics with its report when anything fails.
pub fn run_suite(server: &Server) {
    let (id, secret) = bootstrap_credentials(&server.data_dir);
    let stdout = tool_output(
        Command::new("python3")
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(repo_root().join("tests/oidc"))
            .env("QUANTUS_URL", server.url())
            .env("QUANTUS_CLIENT_ID", id)
            .env("QUANTUS_CLIENT_SECRET", secret),
        "python3 is needed for the OIDC conformance suite",
        "the conformance suite failed (are tests/oidc/requirements.txt installed?):",
    );
    assert!(
        stdout.contains(" passed") && !stdout.contains("failed"),
        "{stdout}"
    );
}

#[test]
fn an_independent_oidc_client_passes_the_conformance_suite() {
    let dir = temp_dir("oidc");
    run_suite(&Server::embedded(&dir));
}
