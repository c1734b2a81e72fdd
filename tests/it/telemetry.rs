//! OpenTelemetry trace export (issue 15, item 3): with `OTEL_EXPORTER_OTLP_ENDPOINT` set,
//! `quantus serve` sends its spans over OTLP/HTTP to a real receiver (tests/otel/receiver.py,
//! decoding with the OpenTelemetry project's protobuf types), and one write is one trace: the
//! HTTP request, the command it runs, the append of its events, then (across the store and
//! Kafka, in other processes) the relay's publish and each read model's apply, each the parent
//! of the next.

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

fn spans_in(out: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("receiver line is JSON"))
        .collect()
}

/// The request, command and append spans of the one `POST /v1/organizations`, checked to be
/// one trace, each the child of the one before; answers (request, append).
fn request_to_append(spans: &[Value]) -> (&Value, &Value) {
    let request = span(spans, "POST /v1/organizations request", |s| {
        s["name"] == "request"
            && s["attributes"]["method"] == "POST"
            && s["attributes"]["uri"] == "/v1/organizations"
    });
    let trace = request["trace_id"].as_str().unwrap();
    assert_ne!(trace, "0".repeat(32));
    let command = span(spans, "Organization command", |s| {
        s["name"] == "command"
            && s["attributes"]["aggregate"] == "Organization"
            && s["trace_id"] == trace
    });
    assert_eq!(
        command["parent_span_id"], request["span_id"],
        "the command is a child of its request"
    );
    let append = span(spans, "append", |s| {
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
    (request, append)
}

/// The apply span of `projection` for the event at `position`, checked to be a child of
/// `parent` in its trace.
fn apply_under<'a>(
    spans: &'a [Value],
    projection: &str,
    position: u64,
    parent: &Value,
) -> &'a Value {
    let apply = span(spans, &format!("{projection} apply"), |s| {
        s["name"] == "apply"
            && s["attributes"]["projection"] == projection
            && s["attributes"]["position"] == position
    });
    assert_eq!(apply["trace_id"], parent["trace_id"], "{apply:#}");
    assert_eq!(
        apply["parent_span_id"], parent["span_id"],
        "the {projection} apply is a child of {parent:#}"
    );
    apply
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
    let api = server.client();
    let (id, position) = api.create_org("Traced Org").await;
    // The embedded projections follow the store's log in this process.
    let read = api
        .get(&format!("/v1/organizations/{id}?min_position={position}"))
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
    // Stopped as an orchestrator would: the spans still batched are flushed on the way out.
    let (_, clean) = server.terminate(Duration::from_secs(30));
    assert!(clean, "quantus serve did not exit cleanly on SIGTERM");

    let spans = spans_in(&out);
    assert!(
        spans.iter().all(|s| s["service"] == "quantus"),
        "OTEL_SERVICE_NAME defaults to quantus: {spans:#?}"
    );
    let (_, append) = request_to_append(&spans);
    // From the in-process log, the read model's apply continues the append's trace (its
    // context kept beside the event, outside the hashed envelope).
    apply_under(&spans, "organizations", position, append);
}

/// Production shape: the API, the relay and a projector as three processes on Postgres and
/// Kafka. The write's trace goes on through the store to the relay's publish (a child of the
/// append), on the Kafka message as a W3C `traceparent` header, to each read model's apply (a
/// child of the publish).
#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_one_trace_across_the_relay_and_kafka_to_the_projection() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::{Headers as _, Message as _};

    let dir = temp_dir("telemetry-kafka");
    let out = dir.join("spans.jsonl");
    let receiver = Receiver::start(&out);
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let database_url = fresh_database().await;
    let prefix = format!("it-{}.", uuid::Uuid::now_v7().simple());
    let vars = |service: &'static str| {
        vec![
            ("DATABASE_URL", database_url.clone()),
            ("KAFKA_BROKERS", kafka_brokers().to_owned()),
            ("QUANTUS_KAFKA_TOPIC_PREFIX", prefix.clone()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
        ]
    };
    let start = |role: &str, service: &'static str| {
        let vars = vars(service);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let dir = dir.join(role);
        std::fs::create_dir_all(&dir).unwrap();
        Server::start(&dir, &["--role", role], &vars)
    };
    let mut api = start("api", "quantus-api");
    let mut relay = start("relay", "quantus-relay");
    let mut projector = start("projector", "quantus-projector");
    let (_, position) = api.client().create_org("Traced Across Kafka").await;
    let db = pool(&database_url).await;
    all_models_reach(&db, position, Duration::from_secs(60)).await;
    for server in [&mut api, &mut relay, &mut projector] {
        let (_, clean) = server.terminate(Duration::from_secs(30));
        assert!(clean, "a quantus process did not exit cleanly on SIGTERM");
    }

    let spans = spans_in(&out);
    let (request, append) = request_to_append(&spans);
    assert_eq!(request["service"], "quantus-api");
    let publish = span(&spans, "relay publish", |s| {
        s["name"] == "publish" && s["attributes"]["position"] == position
    });
    assert_eq!(publish["service"], "quantus-relay");
    assert_eq!(publish["trace_id"], request["trace_id"], "{publish:#}");
    assert_eq!(
        publish["parent_span_id"], append["span_id"],
        "the publish is a child of the append"
    );
    for projection in READ_MODELS {
        let apply = apply_under(&spans, projection, position, publish);
        assert_eq!(apply["service"], "quantus-projector");
    }

    // The message itself carries the publish span's context, in the W3C format.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("it-{}", uuid::Uuid::now_v7()))
        .create()
        .unwrap();
    let topic = format!(
        "{prefix}{}",
        quantus_domain::schema::BoundedContext::Identity.topic()
    );
    let mut traceparent = None;
    for partition in 0..3 {
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(low))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut next = low;
        while next < high {
            let Some(message) = consumer.poll(Duration::from_secs(5)) else {
                continue;
            };
            let message = message.unwrap();
            next = message.offset() + 1;
            let header = |key: &str| {
                let headers = message.headers()?;
                let value = headers.iter().find(|h| h.key == key)?.value?;
                Some(String::from_utf8(value.to_vec()).unwrap())
            };
            if header("ce_quantusposition") == Some(position.to_string()) {
                traceparent = header("traceparent");
            }
        }
    }
    let traceparent = traceparent.expect("the organization's message has a traceparent header");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && parts[3] == "01"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[1..3].iter().all(|p| p
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())),
        "not a W3C traceparent (version 00, sampled): {traceparent}"
    );
    assert_eq!(parts[1], request["trace_id"], "{traceparent}");
    assert_eq!(parts[2], publish["span_id"], "{traceparent}");
}
