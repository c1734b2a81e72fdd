//! OpenTelemetry trace export (issue 15, item 3): with `OTEL_EXPORTER_OTLP_ENDPOINT` set,
//! `quantus serve` sends its spans over OTLP/HTTP to a real receiver (tests/otel/receiver.py,
//! decoding with the OpenTelemetry project's protobuf types), and one write is one trace: the
//! HTTP request, the command it runs, the append of its events, each the parent of the next.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// The receiver, killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
}

impl Receiver {
    fn start(out: &std::path::Path) -> Receiver {
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/otel/receiver.py"))
            .arg(out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 is needed for the OTLP receiver");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let Some(port) = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
        else {
            let _ = child.kill();
            panic!(
                "the OTLP receiver did not start (pip install -r tests/otel/requirements.txt, \
                 as scripts/test.sh does); it said: {line:?}"
            );
        };
        Receiver { child, port }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn span<'a>(spans: &'a [Value], what: &str, matches: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = spans.iter().filter(|s| matches(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what} span in {spans:#?}");
    found[0]
}

#[tokio::test]
async fn a_write_is_one_trace_from_the_request_through_the_command_to_the_append() {
    let dir = temp_dir("telemetry");
    let out = dir.join("spans.jsonl");
    let receiver = Receiver::start(&out);
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let mut server = Server::start(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    );
    server.client().create_org("Traced Org").await;
    // Stopped as an orchestrator would: the spans still batched are flushed on the way out.
    let (_, clean) = server.terminate(Duration::from_secs(30));
    assert!(clean, "quantus serve did not exit cleanly on SIGTERM");

    let spans: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("receiver line is JSON"))
        .collect();
    assert!(
        spans.iter().all(|s| s["service"] == "quantus"),
        "OTEL_SERVICE_NAME defaults to quantus: {spans:#?}"
    );
    let request = span(&spans, "POST /v1/organizations request", |s| {
        s["name"] == "request"
            && s["attributes"]["method"] == "POST"
            && s["attributes"]["uri"] == "/v1/organizations"
    });
    let trace = request["trace_id"].as_str().unwrap();
    assert_ne!(trace, "0".repeat(32));
    let command = span(&spans, "Organization command", |s| {
        s["name"] == "command"
            && s["attributes"]["aggregate"] == "Organization"
            && s["trace_id"] == trace
    });
    assert_eq!(
        command["parent_span_id"], request["span_id"],
        "the command is a child of its request"
    );
    let append = span(&spans, "append", |s| {
        s["name"] == "append" && s["parent_span_id"] == command["span_id"]
    });
    assert_eq!(
        append["trace_id"], trace,
        "the append is in the request's trace"
    );
    assert_eq!(
        append["attributes"]["events"], 1,
        "OrganizationCreated: one event"
    );
}
