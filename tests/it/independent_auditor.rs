//! The log checked by an auditor written in another language from `docs/event-log.md` alone
//! (`tests/auditor/verify_log.py`, Python + PyPI `rfc8785`).

use serde_json::{json, Value};

use crate::harness::*;

fn python_verify(lines: &[Value]) -> (bool, String) {
    let dir = temp_dir("py-audit");
    let file = dir.join("log.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).unwrap();
    independent_verifier("verify_log.py", [&file])
}

#[tokio::test]
async fn an_auditor_in_another_language_accepts_the_log_and_catches_changes() {
    let dir = temp_dir("py-audit-server");
    let server = Server::embedded(&dir);
    let api = server.client();
    for name in ["Acme Quantum", "Zürich Labs ✓", "Ω \"quoted\" \\ name"] {
        let (id, _) = api.create_org(name).await;
        api.patch(
            &format!("/v1/organizations/{id}"),
            json!({"name": format!("{name} II")}),
            None,
        )
        .await;
        api.post(
            &format!("/v1/organizations/{id}/suspend"),
            json!({"reason": "audit\ttest"}),
        )
        .await;
    }
    let lines = tail_log(&server);
    // The platform's bootstrap (policy, keys) comes first; then the nine events made here.
    let base = lines.len() - 9;
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["envelope"]["aggregate_type"] == "Organization")
            .count(),
        9
    );

    let (ok, report) = python_verify(&lines);
    assert!(ok, "{report}");
    assert!(
        report.contains(&format!("events: {}", base + 9)) && report.trim_end().ends_with("OK"),
        "{report}"
    );

    let mut changed = lines.clone();
    changed[base + 4]["envelope"]["payload"]["name"] = json!("Forged");
    let (ok, report) = python_verify(&changed);
    assert!(
        !ok && report.contains(&format!("BROKEN at position {}", base + 5)),
        "{report}"
    );

    let mut removed = lines.clone();
    removed.remove(base + 3);
    let (ok, report) = python_verify(&removed);
    assert!(!ok && report.contains("BROKEN"), "{report}");
}
