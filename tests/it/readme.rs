//! The README as a newcomer uses it: its shell blocks pasted in order into bash, in a fresh
//! folder, against a fresh embedded server. Any command that fails (curl included: HTTP
//! errors count) fails the test.

use std::process::Command;

use crate::harness::*;

/// The fenced `sh` blocks of a Markdown text, in order.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = vec![];
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_readme_shell_blocks_work_when_pasted_in_order() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = shell_blocks(&readme);
    // The README's two commands: this test runs the first itself (the server below is that
    // command's binary), and the second is what runs this test.
    const RUN: &str = "cargo run --release -- serve\n";
    const TEST: &str = "scripts/test.sh\n";
    assert_eq!(blocks.first().map(String::as_str), Some(RUN));
    assert!(blocks.iter().any(|b| b == TEST), "no test command block");
    let walkthrough: Vec<&String> = blocks.iter().filter(|b| *b != RUN && *b != TEST).collect();
    assert!(walkthrough.len() >= 4, "{walkthrough:?}");

    let dir = temp_dir("readme");
    let data = dir.join("quantus-data");
    std::fs::create_dir_all(&data).unwrap();
    let mut server = Server::start(&data, &["--listen", "127.0.0.1:0"], &[]);
    let base = server.url().to_owned();
    let host = base.trim_start_matches("http://");

    // `cargo run --release -- ARGS` is the same binary this test built (in its debug
    // profile); curl fails on HTTP errors so that a wrong request cannot pass unseen.
    let mut script = String::from(
        "set -euo pipefail\n\
         cargo() { if [ \"$1 $2 $3\" = \"run --release --\" ]; then shift 3; \"$QUANTUS_BIN\" \"$@\"; else command cargo \"$@\"; fi; }\n\
         curl() { command curl --fail-with-body \"$@\"; }\n",
    );
    for block in &walkthrough {
        script.push_str(&block.replace("localhost:8080", host));
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env("QUANTUS_BIN", bin())
        .env("QUANTUS_URL", &base)
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BROKERS")
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a README block failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // What the walkthrough promises to show.
    assert!(stdout.contains("\"allowed\":false"), "{stdout}");
    assert!(server.is_running());
}

/// `serve --help` names every variable of `docs/configuration.md`'s table, and the table names
/// every variable the configuration loader reads.
#[test]
fn serve_help_and_the_configuration_table_name_the_same_variables() {
    let doc = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    let documented: std::collections::BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap_or_default();
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let help = quantus(&["serve", "--help"], &[]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for var in &documented {
        if var == "QUANTUS_URL" || var == "QUANTUS_TOKEN" || var == "QUANTUS_LOG" {
            continue; // read by `events tail` and as a fallback of RUST_LOG, not by `serve`
        }
        assert!(
            help.contains(var.as_str()),
            "serve --help does not name {var}"
        );
    }
    for role in ["all", "api", "relay", "projector", "portal"] {
        assert!(
            help.contains(&format!("  {role} ")),
            "serve --help does not name role {role}"
        );
    }
    let loader = std::fs::read_to_string(repo_root().join("infra/src/config.rs")).unwrap();
    for var in loader.split('"').filter(|s| {
        (s.starts_with("QUANTUS_")
            || *s == "DATABASE_URL"
            || *s == "KAFKA_BROKERS"
            || *s == "OBJECT_STORE_URL")
            && s.chars().all(|c| c.is_ascii_uppercase() || c == '_')
    }) {
        assert!(
            documented.contains(var),
            "docs/configuration.md does not document {var}"
        );
    }
}

/// `docker-compose.yml` runs every role the README's production section names, with a
/// healthcheck on each (every role serves HTTP, the relay and projector their operations
/// endpoints), and Docker Compose itself accepts the file
/// (`docker-compose config`, Debian's package: no Docker engine needed to validate).
#[test]
fn the_compose_file_runs_every_role_the_readme_names_and_is_valid() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let roles: std::collections::BTreeSet<&str> = readme
        .split("--role ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|r| r.trim_matches(|c: char| !c.is_ascii_alphanumeric()))
        .collect();
    for role in ["api", "relay", "projector", "portal"] {
        assert!(
            roles.contains(role),
            "the README names no {role} role: {roles:?}"
        );
    }
    let compose_file = repo_root().join("docker-compose.yml");
    let config = tool_output(
        Command::new("docker-compose")
            .arg("-f")
            .arg(&compose_file)
            .arg("config"),
        "docker-compose (Debian's package; scripts/test.sh installs it)",
        "docker-compose refuses the file:",
    );
    for role in &roles {
        assert!(
            config.contains(&format!("- --role\n    - {role}\n"))
                || config.contains(&format!("--role\n      - {role}\n")),
            "no compose service runs --role {role}:\n{config}"
        );
    }
    let compose = std::fs::read_to_string(&compose_file).unwrap();
    for service in [
        "quantus-api",
        "quantus-relay",
        "quantus-projector",
        "quantus-portal",
    ] {
        let block = compose.split(&format!("  {service}:\n")).nth(1).unwrap();
        let block = block.split("\n\n").next().unwrap();
        assert!(
            block.contains("healthcheck:") && block.contains("curl"),
            "{service} has no healthcheck"
        );
    }
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("HEALTHCHECK"),
        "the Dockerfile has no HEALTHCHECK"
    );
}
