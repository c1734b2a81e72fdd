//! The event index (`docs/events.md`): generated from the catalogue (`quantus docs events`),
//! every operation it names is one of `/openapi.json`, every page one the router serves.

use std::path::Path;

use quantus_domain::index::{Via, INDEX};
use serde_json::Value;

use crate::harness::*;

#[test]
fn the_committed_event_index_is_what_the_catalogue_generates() {
    let out = temp_dir("events-index").join("events.md");
    let run = quantus(&["docs", "events", "--out", out.to_str().unwrap()], &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let generated = std::fs::read_to_string(&out).unwrap();
    let committed = std::fs::read_to_string(repo_root().join("docs/events.md")).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/events.md is out of date: run `cargo run -- docs events` and commit it"
    );
    // Every event has its row, and the read models' lists reached it.
    let rows = generated.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(rows, INDEX.len());
    assert!(generated.contains("| `commercial` |"));
}

/// Whether `route` ("METHOD /path") is an operation of the OpenAPI document. A `{name}`
/// segment of the document matches the route's `{...}` or, where it dispatches on it (an
/// `{action}`), a literal.
fn in_openapi(spec: &Value, route: &str) -> bool {
    let Some((method, path)) = route.split_once(' ') else {
        return false;
    };
    let wanted: Vec<&str> = path.split('/').collect();
    spec["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, item)| item.get(method.to_lowercase()).is_some())
        .any(|(doc, _)| {
            let doc: Vec<&str> = doc.split('/').collect();
            doc.len() == wanted.len()
                && doc
                    .iter()
                    .zip(&wanted)
                    .all(|(d, w)| d == w || (d.starts_with('{') && !w.is_empty()))
        })
}

/// Whether a `.route("PATH", ...)` of `api/src` serves `METHOD /PATH` (the method's handler
/// named in the same call).
fn in_router(sources: &str, page: &str) -> bool {
    let Some((method, path)) = page.split_once(' ') else {
        return false;
    };
    let needle = format!(".route(\"{path}\",");
    sources.match_indices(&needle).any(|(at, _)| {
        let call = &sources[at + needle.len()..];
        let mut end = call.find(".route(").unwrap_or(call.len()).min(300);
        while !call.is_char_boundary(end) {
            end -= 1;
        }
        let call = &call[..end];
        call.contains(&format!("{}(", method.to_lowercase()))
    })
}

fn api_sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            api_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_of_the_event_index_is_served() {
    let dir = temp_dir("events-index-routes");
    let server = Server::embedded(&dir);
    let spec: Value = reqwest::get(format!("{}/openapi.json", server.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut sources = String::new();
    api_sources(&repo_root().join("api/src"), &mut sources);

    // The checks refuse what is not there.
    assert!(in_openapi(&spec, "POST /v1/users"));
    assert!(in_openapi(&spec, "POST /v1/users/{id}/disable"));
    assert!(!in_openapi(&spec, "POST /v1/nothing"));
    assert!(!in_openapi(&spec, "GET /v1/organizations/{id}/suspend"));
    assert!(in_router(&sources, "POST /oauth2/login"));
    assert!(!in_router(&sources, "GET /oauth2/login"));

    let mut missing = vec![];
    for e in INDEX {
        for r in e.recorded_by {
            for via in r.via {
                let ok = match via {
                    Via::Api(op) => in_openapi(&spec, op),
                    Via::Page(page) => in_router(&sources, page),
                    Via::Process(_) => true,
                };
                if !ok {
                    missing.push(format!("{} ({}): {via:?}", e.event_type, r.command));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "domain/src/index.rs names routes that are not served:\n{}",
        missing.join("\n")
    );
}
