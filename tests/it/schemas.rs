//! `schemas/` is generated from the Rust types and must stay in step with them.

use crate::harness::*;

#[test]
fn schemas_folder_matches_the_code() {
    let dir = repo_root().join("schemas");
    let out = quantus(&["schemas", "check", "--dir", dir.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "schemas/ is out of date: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_changed_schema_file_is_detected() {
    let dir = temp_dir("schemas");
    let out = quantus(&["schemas", "write", "--dir", dir.to_str().unwrap()], &[]);
    assert!(out.status.success());
    let file = dir.join("OrganizationCreated.v1.json");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("\"name\"", "\"title_\"")).unwrap();
    std::fs::write(dir.join("Stray.v1.json"), "{}").unwrap();
    let out = quantus(&["schemas", "check", "--dir", dir.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OrganizationCreated.v1.json") && err.contains("Stray.v1.json"),
        "{err}"
    );
}

#[test]
fn the_envelope_schema_requires_every_field_and_nothing_else() {
    let dir = repo_root().join("schemas");
    let envelope: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("envelope.v1.json")).unwrap())
            .unwrap();
    let required: Vec<&str> = envelope["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in [
        "event_id",
        "aggregate_type",
        "aggregate_id",
        "sequence",
        "event_type",
        "schema_version",
        "occurred_at",
        "tenant_id",
        "actor",
        "correlation_id",
        "causation_id",
        "payload",
        "prev_hash",
        "hash",
    ] {
        assert!(required.contains(&field), "envelope schema lacks {field}");
    }
    assert_eq!(envelope["additionalProperties"], false);
}
