//! Scenarios (a) to (d) on real Postgres and real Apache Kafka.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use quantus_infra::kafka::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use uuid::Uuid;

use crate::harness::*;

struct Env {
    database_url: String,
    kafka: KafkaSettings,
}

impl Env {
    async fn new() -> Env {
        let database_url = fresh_database().await;
        let mut kafka = KafkaSettings::new(kafka_brokers());
        kafka.topic_prefix = format!("it-{}.", Uuid::now_v7().simple());
        Env {
            database_url,
            kafka,
        }
    }

    fn vars(&self) -> Vec<(&str, &str)> {
        vec![
            ("DATABASE_URL", self.database_url.as_str()),
            ("KAFKA_BROKERS", self.kafka.brokers.as_str()),
            (
                "QUANTUS_KAFKA_TOPIC_PREFIX",
                self.kafka.topic_prefix.as_str(),
            ),
        ]
    }

    fn store(&self) -> [&str; 2] {
        ["--database-url", &self.database_url]
    }

    fn serve(&self, dir: &std::path::Path, args: &[&str]) -> Server {
        Server::start(dir, args, &self.vars())
    }

    /// Every (topic, record) on the platform's topics, read from the beginning.
    async fn kafka_records(&self) -> Vec<quantus_infra::LogRecord> {
        let mut out = vec![];
        quantus_infra::kafka::read_all_topics(&self.kafka, |r| {
            out.push(r);
            Ok(())
        })
        .await
        .expect("read topics");
        out
    }

    /// Waits (up to `within`) until the topics hold the `head` events the log held, and
    /// returns the records then on them.
    async fn kafka_caught_up(
        &self,
        what: &str,
        head: u64,
        within: Duration,
    ) -> Vec<quantus_infra::LogRecord> {
        eventually(what, within, || async {
            let records = self.kafka_records().await;
            (records.len() as u64 >= head).then_some(records)
        })
        .await
    }

    /// Each aggregate's events go to its topic, and some of them are on it.
    fn assert_on_topics(&self, records: &[quantus_infra::LogRecord], topics: &[(&str, &str)]) {
        for (aggregate, topic) in topics {
            assert!(self.kafka.topic_for(aggregate).unwrap().ends_with(topic));
            assert!(
                records
                    .iter()
                    .any(|r| r.envelope.aggregate_type == *aggregate),
                "no {aggregate} event on Kafka"
            );
        }
    }

    fn audit_kafka(&self) -> (bool, String) {
        audit_verify(&[
            "--kafka",
            &self.kafka.brokers,
            "--topic-prefix",
            &self.kafka.topic_prefix,
        ])
    }
}

async fn scalar(pool: &sqlx::AnyPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap()
}

const RELAY_CURSOR: &str =
    "SELECT COALESCE(MAX(position), 0) FROM relay_cursors WHERE relay = 'kafka'";
/// Organizations written in a test database (each is one stream of the read model).
const ORGANIZATIONS: &str =
    "SELECT COUNT(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'Organization'";
const PROJECTED: &str =
    "SELECT COUNT(*) FROM projection_streams WHERE projection = 'organizations'";

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_writers_reach_their_topic_in_order_and_the_model_equals_a_replay() {
    let env = Env::new().await;
    let dir = temp_dir("pg-a");
    let server = env.serve(&dir, &["--listen", "127.0.0.1:0"]);
    let api = server.client();

    // 16 writers x (create + 3 conditional renames), plus 8 unconditional renames racing on
    // one organization: each either wins (200) or gets 409, and only winners write.
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let api = api.clone();
            tokio::spawn(async move {
                let (id, _) = api.create_org(&format!("Writer {w}")).await;
                for v in 1..=3u64 {
                    let r = api
                        .patch(
                            &format!("/v1/organizations/{id}"),
                            json!({"name": format!("Writer {w} v{v}")}),
                            Some(v),
                        )
                        .await;
                    assert_eq!(r.status, 200, "{}", r.body);
                }
                id
            })
        })
        .collect();
    let mut ids = vec![];
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let target = ids[0].clone();
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let api = api.clone();
            let path = format!("/v1/organizations/{target}");
            tokio::spawn(async move {
                api.patch(&path, json!({"name": format!("Racer {i}")}), None)
                    .await
                    .status
            })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.unwrap() {
            200 => won += 1,
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(won >= 1);
    let events = api.all_events().await;
    let head = events.len() as u64;
    assert_eq!(api.events_of("Organization").await.len() as u64, 64 + won);
    let renames_of_target = events
        .iter()
        .filter(|e| {
            e["envelope"]["aggregate_id"] == target.as_str()
                && e["envelope"]["event_type"] == "OrganizationRenamed"
        })
        .count() as u64;
    assert_eq!(renames_of_target, 3 + won, "a refused racer wrote an event");

    // Read-your-writes across relay -> Kafka -> projector.
    let r = api
        .get(&format!(
            "/v1/organizations?limit=200&min_position={head}&wait_ms=30000"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 16);

    // Every event is on the identity topic, once, and each aggregate's events are in order.
    let records = eventually("all events on Kafka", Duration::from_secs(60), || async {
        let records = env.kafka_records().await;
        (records.len() as u64 >= head).then_some(records)
    })
    .await;
    let mut by_aggregate: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for r in &records {
        by_aggregate
            .entry((
                r.envelope.aggregate_type.clone(),
                r.envelope.aggregate_id.clone(),
            ))
            .or_default()
            .push(r.envelope.sequence);
    }
    assert_eq!(
        by_aggregate
            .keys()
            .filter(|(t, _)| t == "Organization")
            .count(),
        16
    );
    for (id, seqs) in &by_aggregate {
        assert_eq!(
            *seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{id:?} out of order on Kafka"
        );
    }
    let mut positions: Vec<u64> = records.iter().map(|r| r.position).collect();
    positions.sort_unstable();
    assert_eq!(positions, (1..=head).collect::<Vec<_>>());

    check_messages_and_topics(&env, &ids).await;

    let (ok, out) = env.audit_kafka();
    assert!(ok && out.contains(&format!("events: {head}")), "{out}");
    let (ok, out) = audit_verify(&env.store());
    assert!(
        ok && out.contains(&format!("positions: 1..{head}")),
        "{out}"
    );
    drop(server);
    assert_model_equals_replay("organizations", &env.store());
}

/// Calls `f` for every message of `topic` from the beginning up to its current end.
fn read_topic(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    mut f: impl FnMut(&BorrowedMessage),
) {
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(low))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut next = low;
        while next < high {
            let Some(m) = consumer.poll(Duration::from_secs(5)) else {
                continue;
            };
            let m = m.unwrap();
            next = m.offset() + 1;
            f(&m);
        }
    }
}

/// CloudEvents headers, keys, Java-compatible partitioning and topic configuration.
async fn check_messages_and_topics(env: &Env, ids: &[String]) {
    let identity = env.kafka.topic_for("Organization").unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka.brokers)
        .set("group.id", format!("it-{}", Uuid::now_v7()))
        .create()
        .unwrap();
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    read_topic(&consumer, &identity, env.kafka.partitions, |m| {
        let envelope: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let headers: HashMap<String, String> = m
            .headers()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        assert_eq!(key, envelope["aggregate_id"].as_str().unwrap());
        assert_eq!(headers["ce_specversion"], "1.0");
        assert_eq!(headers["ce_id"], envelope["event_id"].as_str().unwrap());
        assert_eq!(headers["ce_subject"], key);
        assert_eq!(
            headers["ce_type"],
            format!(
                "dev.quantus.{}.v1",
                envelope["event_type"].as_str().unwrap()
            )
        );
        assert_eq!(
            headers["ce_time"],
            envelope["occurred_at"].as_str().unwrap()
        );
        assert_eq!(
            headers["ce_quantushash"],
            envelope["hash"].as_str().unwrap()
        );
        assert_eq!(
            headers["ce_quantusprevhash"],
            envelope["prev_hash"].as_str().unwrap()
        );
        assert_eq!(headers["ce_sequence"], envelope["sequence"].to_string());
        assert!(headers["ce_quantusposition"].parse::<u64>().is_ok());
        assert_eq!(headers["content-type"], "application/json");
        // Trace context travels only while trace export is on (it is off here).
        assert!(!headers.contains_key("traceparent"), "{headers:?}");
        partition_of.insert(key, m.partition());
    });

    // Kafka's own Java producer puts the same keys on the same partitions.
    let java_topic = format!("{}java-partitioner", env.kafka.topic_prefix);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka.brokers)
        .create()
        .unwrap();
    admin
        .create_topics(
            &[rdkafka::admin::NewTopic::new(
                &java_topic,
                env.kafka.partitions,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let input: String = ids.iter().map(|id| format!("{id}|x\n")).collect();
    let mut child = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/kafka.sh"))
        .args([
            "tool",
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            &env.kafka.brokers,
            "--topic",
            &java_topic,
        ])
        .args([
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=|",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run Kafka's ConsoleProducer");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "ConsoleProducer failed");
    let mut java_partition_of = BTreeMap::new();
    read_topic(&consumer, &java_topic, env.kafka.partitions, |m| {
        java_partition_of.insert(
            String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            m.partition(),
        );
    });
    assert_eq!(java_partition_of.len(), ids.len());
    for id in ids {
        assert_eq!(
            partition_of[id], java_partition_of[id],
            "Rust and Java disagree on the partition of {id}"
        );
    }
    assert!(
        partition_of
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1,
        "all keys on one partition"
    );

    // Topics keep everything forever and are never compacted.
    let specifiers: Vec<String> = env.kafka.topics();
    let resources: Vec<ResourceSpecifier> = specifiers
        .iter()
        .map(|t| ResourceSpecifier::Topic(t))
        .collect();
    for result in admin
        .describe_configs(&resources, &AdminOptions::new())
        .await
        .unwrap()
    {
        let resource = result.unwrap();
        let get = |name: &str| resource.get(name).and_then(|e| e.value.clone());
        assert_eq!(get("retention.ms").as_deref(), Some("-1"));
        assert_eq!(get("cleanup.policy").as_deref(), Some("delete"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn b_killing_the_relay_mid_stream_loses_nothing_and_duplicates_are_ignored() {
    let env = Env::new().await;
    let dir = temp_dir("pg-b");
    let api_server = env.serve(&dir, &["--role", "api", "--listen", "127.0.0.1:0"]);
    let _projector = env.serve(&dir, &["--role", "projector"]);
    let api = api_server.client();
    let db = pool(&env.database_url).await;
    let head_before = write_organizations(&env.database_url, 3000, 8).await;

    // Keep writing while the relay runs, then kill it as soon as it has published something.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let api = api.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                api.create_org(&format!("Live {i}")).await;
                i += 1;
            }
        })
    };
    let mut relay = env.serve(&dir, &["--role", "relay"]);
    let cursor = eventually("the relay to publish", Duration::from_secs(60), || async {
        let c = scalar(&db, RELAY_CURSOR).await;
        (c > 0).then_some(c)
    })
    .await;
    relay.kill();
    let at_kill = scalar(&db, RELAY_CURSOR).await;
    assert!(
        (at_kill as u64) < head_before,
        "the relay finished before it was killed ({cursor}, {at_kill})"
    );

    let _relay = env.serve(&dir, &["--role", "relay"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let head = scalar(&db, "SELECT MAX(position) FROM events").await;
    eventually(
        "the relay to catch up",
        Duration::from_secs(120),
        || async { (scalar(&db, RELAY_CURSOR).await == head).then_some(()) },
    )
    .await;

    // Nothing lost on Kafka (the auditor checks every position 1..head and every chain).
    let (ok, out) = env.audit_kafka();
    assert!(ok, "{out}");
    assert!(out.contains(&format!("events: {head}")), "{out}");
    // The projector applied each event once, duplicates or not.
    let r = api
        .get(&format!(
            "/v1/organizations?limit=1&min_position={head}&wait_ms=30000"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(
        "the projector to apply everything",
        Duration::from_secs(60),
        || async {
            (scalar(&db, PROJECTED).await == scalar(&db, ORGANIZATIONS).await).then_some(())
        },
    )
    .await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM organizations_view WHERE version <> 1"
        )
        .await,
        0
    );
    assert_model_equals_replay("organizations", &env.store());
}

#[tokio::test(flavor = "multi_thread")]
async fn c_killing_the_projector_mid_batch_leaves_a_correct_model_after_restart() {
    let env = Env::new().await;
    let dir = temp_dir("pg-c");
    let head = write_organizations(&env.database_url, 4000, 8).await as i64;
    let db = pool(&env.database_url).await;
    let _relay = env.serve(&dir, &["--role", "relay"]);
    eventually(
        "the relay to publish everything",
        Duration::from_secs(120),
        || async { (scalar(&db, RELAY_CURSOR).await == head).then_some(()) },
    )
    .await;

    let mut projector = env.serve(&dir, &["--role", "projector"]);
    eventually(
        "the projector to commit a batch",
        Duration::from_secs(60),
        || async { (scalar(&db, PROJECTED).await > 0).then_some(()) },
    )
    .await;
    projector.kill();
    let at_kill = scalar(&db, PROJECTED).await;
    let organizations = scalar(&db, ORGANIZATIONS).await;
    assert!(
        at_kill < organizations,
        "the projector finished before it was killed"
    );
    // What was committed is consistent: every applied stream has its row, and no more.
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM organizations_view").await,
        at_kill
    );

    let _projector = env.serve(&dir, &["--role", "projector"]);
    eventually(
        "the projector to finish after restart",
        Duration::from_secs(120),
        || async { (scalar(&db, PROJECTED).await == organizations).then_some(()) },
    )
    .await;
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM organizations_view").await,
        organizations
    );
    assert_model_equals_replay("organizations", &env.store());
}

#[tokio::test(flavor = "multi_thread")]
async fn d_changing_one_stored_event_in_postgres_is_named_by_the_auditor() {
    let env = Env::new().await;
    write_organizations(&env.database_url, 20, 4).await;
    let (ok, out) = audit_verify(&env.store());
    assert!(ok, "{out}");
    let db = pool(&env.database_url).await;
    let refused =
        sqlx::query("UPDATE events SET payload = '{\"name\":\"Evil\"}' WHERE position = 7")
            .execute(&db)
            .await;
    assert!(refused.unwrap_err().to_string().contains("append-only"));
    let refused = sqlx::query("DELETE FROM events WHERE position = 7")
        .execute(&db)
        .await;
    assert!(refused.is_err());
    // An attacker with owner rights switches the guard off first.
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET payload = '{\"name\":\"Evil\"}' WHERE position = 7")
        .execute(&db)
        .await
        .unwrap();
    let event_id: String = sqlx::query_scalar("SELECT event_id FROM events WHERE position = 7")
        .fetch_one(&db)
        .await
        .unwrap();
    let (ok, out) = audit_verify(&env.store());
    assert!(!ok, "{out}");
    assert!(
        out.contains("BROKEN at position 7") && out.contains(&event_id),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn e_quantumlock_runs_on_postgres_and_kafka() {
    use quantus_crypto::document::SignedDocument;
    use quantus_crypto::keys::TrustedKeys;
    use quantus_crypto::license::{verify, CrlCheck, LicenseError};

    let env = Env::new().await;
    let dir = temp_dir("pg-ql");
    let server = env.serve(&dir, &["--listen", "127.0.0.1:0"]);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    let r = api
        .post(
            "/v1/licenses",
            json!({"organization_id": org, "product": "qpu", "edition": "pro", "expires_at": "2030-01-01T00:00:00Z", "max_activations": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let get = |path: String| {
        let api = api.clone();
        async move {
            api.request(reqwest::Method::GET, &path)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec()
        }
    };
    let file =
        SignedDocument::from_canonical_json(&get(format!("/v1/licenses/{id}/file")).await).unwrap();
    let keys = TrustedKeys::from_json(&get("/v1/keys".into()).await).unwrap();
    assert!(verify(&file, &keys, chrono::Utc::now(), None, None).is_ok());

    let r = api
        .post(
            &format!("/v1/licenses/{id}/revoke"),
            json!({"reason": "terminated"}),
        )
        .await;
    let position = r.body["position"].as_u64().unwrap();
    let crl = SignedDocument::from_canonical_json(
        &get(format!("/v1/crl?min_position={position}&wait_ms=30000")).await,
    )
    .unwrap();
    let check = CrlCheck {
        document: &crl,
        max_age: chrono::Duration::hours(1),
        min_serial: None,
    };
    assert!(matches!(
        verify(&file, &keys, chrono::Utc::now(), Some(&check), None),
        Err(LicenseError::Revoked { .. })
    ));

    let head = api.all_events().await.len() as u64;
    env.kafka_caught_up(
        "the licensing events on Kafka",
        head,
        Duration::from_secs(60),
    )
    .await;
    let licensing = env.kafka.topic_for("License").unwrap();
    assert!(licensing.ends_with("quantus.licensing.v1"));
    let (ok, out) = env.audit_kafka();
    assert!(ok && out.contains(&format!("events: {head}")), "{out}");
    drop(server);
    assert_model_equals_replay("licenses", &env.store());
}

#[tokio::test(flavor = "multi_thread")]
async fn f_a_standby_relay_takes_over_and_nothing_is_published_twice() {
    let env = Env::new().await;
    let dir = temp_dir("pg-f");
    let db = pool(&env.database_url).await;
    let head = write_organizations(&env.database_url, 300, 4).await as i64;
    let mut active = env.serve(&dir, &["--role", "relay"]);
    eventually(
        "the first relay to publish everything",
        Duration::from_secs(60),
        || async { (scalar(&db, RELAY_CURSOR).await == head).then_some(()) },
    )
    .await;
    // A second relay under the same name stands by while the first one lives.
    let _standby = env.serve(&dir, &["--role", "relay"]);
    let head = write_organizations(&env.database_url, 300, 4).await as i64;
    eventually(
        "the active relay to publish the new events",
        Duration::from_secs(60),
        || async { (scalar(&db, RELAY_CURSOR).await == head).then_some(()) },
    )
    .await;
    // The active relay dies; the standby takes over.
    active.kill();
    let head = write_organizations(&env.database_url, 300, 4).await as i64;
    eventually(
        "the standby to take over",
        Duration::from_secs(60),
        || async { (scalar(&db, RELAY_CURSOR).await == head).then_some(()) },
    )
    .await;
    let records = env.kafka_records().await;
    assert_eq!(
        records.len() as i64,
        head,
        "an event was published twice, or lost"
    );
    let (ok, out) = env.audit_kafka();
    assert!(ok && !out.contains("duplicate"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn g_identity_runs_on_postgres_and_kafka() {
    use crate::qsa::*;
    let env = Env::new().await;
    let dir = temp_dir("pg-qsa");
    let f = fixture_on(env.serve(&dir, &["--listen", "127.0.0.1:0"])).await;
    let mut browser = Browser::new(f.server.url());
    let code = sign_in_for_code(&f, &mut browser, "openid offline_access").await;
    redeem_code(&f, &code).await;
    let head = f.admin.all_events().await.len() as u64;
    let records = env
        .kafka_caught_up(
            "the identity and audit events on Kafka",
            head,
            Duration::from_secs(60),
        )
        .await;
    env.assert_on_topics(
        &records,
        &[
            ("User", "quantus.identity.v1"),
            ("Client", "quantus.identity.v1"),
            ("Grant", "quantus.audit.v1"),
            ("SignInAttempt", "quantus.audit.v1"),
            ("Session", "quantus.audit.v1"),
        ],
    );
    let (ok, out) = env.audit_kafka();
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn h_the_oidc_conformance_suite_passes_on_postgres_and_kafka() {
    let env = Env::new().await;
    let dir = temp_dir("pg-oidc");
    let server = env.serve(&dir, &["--listen", "127.0.0.1:0"]);
    let suite = tokio::task::spawn_blocking(move || {
        crate::oidc_conformance::run_suite(&server);
        server
    });
    let server = suite.await.unwrap();
    let head = server.client().all_events().await.len() as u64;
    env.kafka_caught_up(
        "every identity and audit event on Kafka",
        head,
        Duration::from_secs(120),
    )
    .await;
    let (ok, out) = env.audit_kafka();
    assert!(ok, "{out}");
    wait_for_projection(&env.database_url, "users", "User").await;
    drop(server);
    // The replay opens personal data with the same master key (in the data folder).
    let mut store = env.store().to_vec();
    store.extend(["--data-dir", dir.to_str().unwrap()]);
    assert_model_equals_replay("users", &store);
}

#[tokio::test(flavor = "multi_thread")]
async fn i_the_evidence_plane_runs_on_postgres_kafka_and_s3() {
    let env = Env::new().await;
    let (s3_vars, bucket) = s3();
    let url = format!("s3://{bucket}/it-{}", Uuid::now_v7().simple());
    let mut vars = env.vars();
    vars.push(("OBJECT_STORE_URL", url.as_str()));
    // The checkpoint scheduler, on Postgres: every second when anything happened.
    vars.push(("QUANTUS_CHECKPOINT_SECONDS", "1"));
    for (k, v) in s3_vars {
        vars.push((k.as_str(), v.as_str()));
    }
    let dir = temp_dir("pg-s3");
    let server = Server::start(&dir, &["--listen", "127.0.0.1:0"], &vars);
    let api = server.client();
    let (org, _) = api.create_org("Acme").await;
    // Upload (20 MiB, multipart), download re-checked, bundles verified offline, forgeries.
    crate::evidence::bundle_round_trip(&api, &dir, &org).await;
    // Nothing of it went to the local folder: it is all in the S3 server.
    assert!(
        !dir.join("objects").exists(),
        "artifacts were written locally"
    );
    // (scripts/s3.sh checks on every start that the server refuses a wrong secret.)
    let head = api.all_events().await.len() as u64;
    let records = env
        .kafka_caught_up(
            "the evidence events on Kafka",
            head,
            Duration::from_secs(60),
        )
        .await;
    assert!(env
        .kafka
        .topic_for("Job")
        .unwrap()
        .ends_with("quantus.evidence.v1"));
    assert!(records
        .iter()
        .any(|r| r.envelope.event_type == "EvidenceBundleCreated"));
    let (ok, out) = env.audit_kafka();
    assert!(ok, "{out}");
    wait_for_projection(&env.database_url, "jobs", "Job").await;
    drop(server);
    let mut store = env.store().to_vec();
    store.extend(["--data-dir", dir.to_str().unwrap()]);
    assert_model_equals_replay("jobs", &store);
}

/// The Portal as its own process on Postgres + Kafka: it trusts QSA's JWKS and calls
/// QuantumLock with its own service principal over HTTP. Its contract-to-licence process
/// manager is killed (SIGKILL) mid-way through a contract's licences and, restarted, finishes
/// without issuing any licence twice. Then the whole Portal scenario runs against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j_the_portal_runs_as_its_own_process_and_recovers_from_a_crash() {
    use crate::portal::{register_customer, WEBHOOK_SECRET};
    let env = Env::new().await;
    let dir = temp_dir("pg-portal-api");
    let api_server = env.serve(&dir, &["--role", "api", "--listen", "127.0.0.1:0"]);
    let _relay = env.serve(&dir, &["--role", "relay"]);
    let _projector = env.serve(&dir, &["--role", "projector"]);
    let platform = api_server.client();
    let (_, admin_secret) = bootstrap_credentials(&dir);
    let portal_file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("portal-client.json")).expect("portal-client.json"),
    )
    .unwrap();
    let portal_dir = temp_dir("pg-portal");
    let stripe = crate::stripe::stripe_api_base();
    let mut vars = env.vars();
    let (qsa, id, secret) = (
        api_server.url().to_owned(),
        portal_file["client_id"].as_str().unwrap().to_owned(),
        portal_file["client_secret"].as_str().unwrap().to_owned(),
    );
    vars.extend([
        ("QUANTUS_QSA_URL", qsa.as_str()),
        ("QUANTUS_QUANTUMLOCK_URL", qsa.as_str()),
        ("QUANTUS_PORTAL_CLIENT_ID", id.as_str()),
        ("QUANTUS_PORTAL_CLIENT_SECRET", secret.as_str()),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        // Invoices go to Stripe's API (its own double, stripe-mock).
        ("STRIPE_SECRET_KEY", "sk_test_quantus"),
        ("STRIPE_API_BASE", stripe.as_str()),
    ]);
    let start_portal = || {
        Server::start(
            &portal_dir,
            &["--role", "portal", "--listen", "127.0.0.1:0"],
            &vars,
        )
    };

    // 50 line items: 50 licences to issue, one HTTP call each.
    let (org, _) = platform.create_org("Crashy").await;
    register_customer(&platform, &org, "EUR").await;
    let items: Vec<serde_json::Value> = (0..50)
        .map(|i| {
            json!({"id": format!("item-{i}"), "product": format!("product-{i}"), "edition": "pro",
                   "features": [], "quotas": {}, "limits": {}, "quantity": 1, "unit_price": 100,
                   "usage_prices": {}, "max_activations": 1})
        })
        .collect();
    let db = pool(&env.database_url).await;
    let issued = |ids: Vec<String>| {
        let db = db.clone();
        async move {
            let mut n = 0;
            for id in &ids {
                let row: (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM events WHERE event_type = 'LicenseIssued' AND aggregate_id = $1",
                )
                .bind(id.as_str())
                .fetch_one(&db)
                .await
                .unwrap();
                assert!(row.0 <= 1, "licence {id} issued {} times", row.0);
                n += row.0;
            }
            n
        }
    };
    let mut crashed_mid_way = None;
    let mut all_ids = vec![];
    for attempt in 0..3 {
        let mut portal = start_portal();
        let contract = crate::portal::active_contract(
            &platform,
            &org,
            serde_json::Value::Array(items.clone()),
            &format!("203{attempt}-01-01T00:00:00Z"),
        )
        .await;
        let shown = platform.get(&format!("/v1/contracts/{contract}")).await;
        let ids: Vec<String> = shown.body["licenses"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 50);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let seen = loop {
            let n = issued(ids.clone()).await;
            if n > 0 {
                portal.kill();
                break n;
            }
            assert!(std::time::Instant::now() < deadline, "no licence issued");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let after_kill = issued(ids.clone()).await;
        all_ids.extend(ids.clone());
        if after_kill < 50 {
            crashed_mid_way = Some((seen, after_kill));
            // Restarted, it carries on from its cursor and finishes.
            let _portal = start_portal();
            eventually("all 50 licences", Duration::from_secs(120), || async {
                (issued(ids.clone()).await == 50).then_some(())
            })
            .await;
            break;
        }
    }
    let (seen, at_kill) = crashed_mid_way.expect("the process manager was never killed mid-way");
    eprintln!("the process manager was killed after {seen} licences ({at_kill} when it died)");
    assert!(
        seen >= 1 && at_kill < 50,
        "killed after {seen}, {at_kill} issued"
    );
    // Exactly once each (checked inside `issued`), and every one is active at QuantumLock.
    issued(all_ids.clone()).await;
    for id in all_ids.iter().rev().take(3) {
        crate::portal::licence(&platform, id, "active").await;
    }

    // The whole Portal scenario against the Portal process.
    let portal = start_portal();
    let portal_api = Api {
        base: portal.url().to_owned(),
        token: platform.token.clone(),
        http: reqwest::Client::new(),
    };
    crate::portal::scenario(&platform, &portal_api, &admin_secret).await;
    for aggregate in ["Customer", "Contract", "UsageMeter", "Invoice"] {
        wait_for_projection(&env.database_url, "commercial", aggregate).await;
    }
    drop(portal);
    drop(api_server);
    let mut store = env.store().to_vec();
    store.extend(["--data-dir", dir.to_str().unwrap()]);
    assert_model_equals_replay("commercial", &store);
}

/// Licences that can wait, with the Portal as its own process on Postgres + Kafka: pointed at
/// a QuantumLock address nothing listens on, its licences are pending and retried until
/// QuantumLock answers there; restarted (with timed retries out of the test's reach), a
/// contract activated while its organization is suspended is pending and issued on the
/// organization's reactivation, without another restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j_the_portal_process_retries_licences_that_can_wait() {
    let env = Env::new().await;
    let dir = temp_dir("pg-portal-retry-api");
    let api_server = env.serve(&dir, &["--role", "api", "--listen", "127.0.0.1:0"]);
    let _relay = env.serve(&dir, &["--role", "relay"]);
    let _projector = env.serve(&dir, &["--role", "projector"]);
    let platform = api_server.client();
    let portal_file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("portal-client.json")).expect("portal-client.json"),
    )
    .unwrap();
    let portal_dir = temp_dir("pg-portal-retry");
    let port = free_port();
    let down = format!("http://127.0.0.1:{port}");
    let (qsa, id, secret) = (
        api_server.url().to_owned(),
        portal_file["client_id"].as_str().unwrap().to_owned(),
        portal_file["client_secret"].as_str().unwrap().to_owned(),
    );
    let portal_vars = |quantumlock: &str, first: &str, max: &str| {
        let mut vars: Vec<(String, String)> = env
            .vars()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        for (k, v) in [
            ("QUANTUS_QSA_URL", qsa.as_str()),
            ("QUANTUS_QUANTUMLOCK_URL", quantumlock),
            ("QUANTUS_PORTAL_CLIENT_ID", id.as_str()),
            ("QUANTUS_PORTAL_CLIENT_SECRET", secret.as_str()),
            ("QUANTUS_LICENSE_RETRY_FIRST_SECONDS", first),
            ("QUANTUS_LICENSE_RETRY_MAX_SECONDS", max),
        ] {
            vars.push((k.to_owned(), v.to_owned()));
        }
        vars
    };
    let start_portal = |vars: Vec<(String, String)>| {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::start(
            &portal_dir,
            &["--role", "portal", "--listen", "127.0.0.1:0"],
            &vars,
        )
    };
    let portal_api = |portal: &Server| Api {
        base: portal.url().to_owned(),
        token: platform.token.clone(),
        http: reqwest::Client::new(),
    };

    let portal = start_portal(portal_vars(&down, "2", "2"));
    crate::portal::quantumlock_down_then_up(&platform, &portal_api(&portal), port).await;
    drop(portal);

    let portal = start_portal(portal_vars(&qsa, "3600", "3600"));
    crate::portal::suspended_then_reactivated(&platform, &portal_api(&portal)).await;
    wait_for_projection(&env.database_url, "commercial", "Contract").await;
    drop(portal);
    drop(api_server);
    let mut store = env.store().to_vec();
    store.extend(["--data-dir", dir.to_str().unwrap()]);
    assert_model_equals_replay("commercial", &store);
}

#[tokio::test(flavor = "multi_thread")]
async fn k_scim_on_postgres_and_kafka() {
    let env = Env::new().await;
    let dir = temp_dir("pg-scim");
    let server = env.serve(&dir, &["--listen", "127.0.0.1:0"]);
    crate::scim::scenario(&server).await;
    wait_for_projection(&env.database_url, "users", "User").await;
    wait_for_projection(&env.database_url, "groups", "Group").await;
    drop(server);
    let mut store = env.store().to_vec();
    store.extend(["--data-dir", dir.to_str().unwrap()]);
    assert_model_equals_replay("users", &store);
}

/// TOTP, conditional access and passkeys on Postgres + Kafka (one server, public at
/// localhost so that WebAuthn accepts its origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m_second_factors_and_conditional_access_on_postgres_and_kafka() {
    let env = Env::new().await;
    let (server, public) = crate::passkeys::localhost_server("pg-mfa", &env.vars());
    let f = crate::qsa::fixture_on(server).await;
    crate::mfa::enrolment_scenario(&f).await;
    crate::access::scenario(&f).await;
    crate::passkeys::scenario(&f.server, &public).await;
}

/// The SAML identity provider on Postgres + Kafka: the whole pysaml2 scenario, then its
/// events on their topics and an audit of the topics.
#[tokio::test(flavor = "multi_thread")]
async fn l_saml_on_postgres_and_kafka() {
    let env = Env::new().await;
    let dir = temp_dir("pg-saml");
    let f = crate::qsa::fixture_on(env.serve(&dir, &["--listen", "127.0.0.1:0"])).await;
    crate::saml::scenario(&f).await;
    let head = f.admin.all_events().await.len() as u64;
    let records = env
        .kafka_caught_up("the SAML events on Kafka", head, Duration::from_secs(60))
        .await;
    env.assert_on_topics(
        &records,
        &[
            ("SamlServiceProvider", "quantus.identity.v1"),
            ("SamlSigningKeys", "quantus.identity.v1"),
            ("SamlExchange", "quantus.audit.v1"),
        ],
    );
    let (ok, out) = env.audit_kafka();
    assert!(ok, "{out}");
}

/// Issue 17, item 1: the real broker is stopped and started again three times, with writes
/// during and after each outage. Without restarting any process, every read model catches up
/// within 60 s of each restart, `/readyz` reports the stalled models while the broker is away
/// (and is ready again after), and a projector stops promptly on SIGTERM during an outage.
#[tokio::test(flavor = "multi_thread")]
async fn n_projectors_recover_from_broker_outages_by_themselves() {
    let broker = OwnKafka::start("outage");
    let mut kafka = KafkaSettings::new(broker.brokers.clone());
    kafka.topic_prefix = format!("it-{}.", Uuid::now_v7().simple());
    let env = Env {
        database_url: fresh_database().await,
        kafka,
    };
    let dir = temp_dir("pg-outage");
    let mut vars = env.vars();
    vars.push(("QUANTUS_READY_STALL_SECONDS", "5"));
    let api_server = Server::start(&dir, &["--role", "api", "--listen", "127.0.0.1:0"], &vars);
    let mut relay = Server::start(&dir, &["--role", "relay"], &vars);
    let mut projector = Server::start(&dir, &["--role", "projector"], &vars);
    let ready = || async {
        let r = reqwest::get(format!("{}/readyz", api_server.url()))
            .await
            .expect("GET /readyz");
        let status = r.status().as_u16();
        (
            status,
            r.json::<serde_json::Value>().await.unwrap_or_default(),
        )
    };
    let db = pool(&env.database_url).await;
    let head = write_organizations(&env.database_url, 100, 4).await;
    all_models_reach(&db, head, Duration::from_secs(60)).await;

    // Outages of various lengths, all past the consumers' 10 s session timeout.
    for (round, outage) in [20u64, 45, 30].into_iter().enumerate() {
        broker.halt();
        let halted = std::time::Instant::now();
        let head = write_organizations(&env.database_url, 100, 4).await;
        let (status, body) = eventually(
            "/readyz to report stalled read models",
            Duration::from_secs(60),
            || async {
                let (status, body) = ready().await;
                (status == 503).then_some((status, body))
            },
        )
        .await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("stalled"),
            "{status} {body}"
        );
        let rest = Duration::from_secs(outage).saturating_sub(halted.elapsed());
        tokio::time::sleep(rest).await;
        broker.resume();
        let resumed = std::time::Instant::now();
        all_models_reach(&db, head, Duration::from_secs(60)).await;
        let head = write_organizations(&env.database_url, 100, 4).await;
        all_models_reach(&db, head, Duration::from_secs(60)).await;
        eprintln!(
            "outage {round}: {outage} s; every read model caught up {:.1} s after the broker came back",
            resumed.elapsed().as_secs_f64()
        );
        eventually(
            "/readyz to be ready again",
            Duration::from_secs(30),
            || async { (ready().await.0 == 200).then_some(()) },
        )
        .await;
    }
    assert!(projector.is_running(), "the projector died");
    assert!(relay.is_running(), "the relay died");

    // SIGTERM while the broker is away and the consumers cannot leave their groups.
    broker.halt();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (took, clean) = projector.terminate(Duration::from_secs(30));
    assert!(clean, "the projector did not exit cleanly on SIGTERM");
    assert!(
        took < Duration::from_secs(8),
        "the projector took {took:?} to stop on SIGTERM"
    );
    drop(api_server);
    assert_model_equals_replay("organizations", &env.store());
}

/// Issue 17, item 2: a projector killed with SIGKILL and started again (same
/// `QUANTUS_KAFKA_INSTANCE_ID`: static group membership) gets its partitions back at once,
/// rather than after the dead member's session times out.
#[tokio::test(flavor = "multi_thread")]
async fn o_a_projector_killed_with_sigkill_resumes_within_seconds() {
    let env = Env::new().await;
    let dir = temp_dir("pg-takeover");
    let mut vars = env.vars();
    vars.push(("QUANTUS_KAFKA_INSTANCE_ID", "projector-0"));
    let _relay = env.serve(&dir, &["--role", "relay"]);
    let mut projector = Server::start(&dir, &["--role", "projector"], &vars);
    let db = pool(&env.database_url).await;
    let head = write_organizations(&env.database_url, 200, 4).await;
    all_models_reach(&db, head, Duration::from_secs(60)).await;

    projector.kill();
    let killed = std::time::Instant::now();
    let _projector = Server::start(&dir, &["--role", "projector"], &vars);
    let head = write_organizations(&env.database_url, 50, 4).await;
    eventually(
        "the relay to publish the new events",
        Duration::from_secs(30),
        || async { (scalar(&db, RELAY_CURSOR).await as u64 >= head).then_some(()) },
    )
    .await;
    all_models_reach(&db, head, Duration::from_secs(60)).await;
    let took = killed.elapsed();
    eprintln!(
        "every read model had the new events {:.1} s after the kill",
        took.as_secs_f64()
    );
    // The dead member's session lasts 10 s: well under that means the restarted member did not
    // wait for it (dynamic membership takes just over 10 s here).
    assert!(
        took < Duration::from_secs(6),
        "the restarted projector took {took:?} to apply the new events"
    );
}

/// Issue 17, item 3: `min_position` waits for the model's high-water mark, which covers every
/// earlier position, including events the model does not handle and events on other topics.
/// The organizations model is held back on purpose (its batches need a lock the test holds).
#[tokio::test(flavor = "multi_thread")]
async fn p_read_your_writes_waits_for_every_earlier_position() {
    let env = Env::new().await;
    let dir = temp_dir("pg-ryw");
    let api_server = env.serve(&dir, &["--role", "api", "--listen", "127.0.0.1:0"]);
    let _relay = env.serve(&dir, &["--role", "relay"]);
    let _projector = env.serve(&dir, &["--role", "projector"]);
    let api = api_server.client();
    let (org, position) = api.create_org("Acme").await;
    let r = api
        .get(&format!(
            "/v1/organizations/{org}?min_position={position}&wait_ms=30000"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Hold the organizations model back: each of its batches takes this lock first
    // (`Database::begin_update`).
    let db = pool(&env.database_url).await;
    let mut holder = db.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('organizations'))")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (held, created) = api.create_org("Held back").await;
    // A later event the organizations model does not handle, on another topic.
    let r = api
        .post(
            "/v1/licenses",
            json!({"organization_id": org, "product": "qpu", "edition": "pro", "expires_at": "2030-01-01T00:00:00Z", "max_activations": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let later = r.body["position"].as_u64().unwrap();
    assert!(later > created);
    // The licenses model goes on and passes it...
    let r = api
        .get(&format!(
            "/v1/licenses?org={org}&min_position={later}&wait_ms=30000"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // ...while the organizations model has not seen `created`, so it has not seen `later`.
    for position in [later, created] {
        let r = api
            .get(&format!(
                "/v1/organizations/{held}?min_position={position}&wait_ms=1500"
            ))
            .await;
        assert_eq!(r.status, 503, "min_position={position}: {}", r.body);
        assert_eq!(r.headers["retry-after"], "1", "min_position={position}");
    }

    sqlx::query("SELECT pg_advisory_unlock(hashtext('organizations'))")
        .execute(&mut *holder)
        .await
        .unwrap();
    let r = api
        .get(&format!(
            "/v1/organizations/{held}?min_position={later}&wait_ms=30000"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "Held back");
}

/// The high-water mark moves over positions only when none below is missing: Kafka
/// partitions deliver independently, so a later position can arrive first.
#[tokio::test(flavor = "multi_thread")]
async fn q_the_high_water_mark_waits_for_positions_still_on_their_way() {
    use quantus_projections::runner::{Delivery, ProjectionRunner};
    let url = fresh_database().await;
    write_organizations(&url, 6, 1).await;
    let db = quantus_infra::Database::open(Some(&url), &temp_dir("hwm"))
        .await
        .unwrap();
    let runner = ProjectionRunner::new(
        db.clone(),
        std::sync::Arc::new(quantus_projections::organizations::OrganizationsView),
    );
    runner.prepare().await.unwrap();
    let records = quantus_infra::event_store::read_log(&db, 0, 100)
        .await
        .unwrap();
    let head = records.last().unwrap().position;
    assert!(head >= 6);
    // Two "partitions": even and odd positions, at offsets of their own.
    let on = |position: u64| {
        let record = records.iter().find(|r| r.position == position).unwrap();
        Delivery {
            source: format!("t/{}", position % 2),
            offset: position / 2,
            record: record.clone(),
            traceparent: None,
        }
    };
    let apply = |positions: Vec<u64>| {
        let runner = runner.clone();
        let deliveries: Vec<Delivery> = positions.into_iter().map(on).collect();
        async move { runner.apply_batch(&deliveries).await.unwrap() }
    };
    apply(vec![1, 3, 5]).await;
    assert_eq!(runner.watermark().await.unwrap(), 1);
    assert!(!runner.has_applied(3).await.unwrap());
    apply(vec![2]).await;
    assert_eq!(runner.watermark().await.unwrap(), 3);
    // Delivered again (a rebalance): changes nothing.
    apply(vec![1, 2, 3, 5]).await;
    assert_eq!(runner.watermark().await.unwrap(), 3);
    apply(vec![4, 6]).await;
    assert_eq!(runner.watermark().await.unwrap(), 6);
    let rest: Vec<u64> = (7..=head).collect();
    apply(rest).await;
    assert_eq!(runner.watermark().await.unwrap(), head);
    assert!(runner.has_applied(head).await.unwrap());
    assert!(!runner.has_applied(head + 1).await.unwrap());
}

/// The value of one series in a scrape (`name{labels}`), if exposed.
fn series(scrape: &str, name_and_labels: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    })
}

/// Issue 15, item 4: relay lag and projection lag in seconds, read from one process that runs
/// everything on Postgres and Kafka, rise while the relay is held back and fall back to 0 when
/// it goes on.
#[tokio::test(flavor = "multi_thread")]
async fn r_relay_and_projection_lag_are_exposed_and_move() {
    let env = Env::new().await;
    let dir = temp_dir("pg-lag");
    let db = pool(&env.database_url).await;
    // Hold the relay back: it stands by while another session has its lease.
    let mut relay_lease = db.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('quantus-relay:kafka'))")
        .execute(&mut *relay_lease)
        .await
        .unwrap();
    let server = env.serve(&dir, &["--listen", "127.0.0.1:0"]);
    let api = server.client();
    sqlx::query(
        "INSERT INTO relay_cursors (relay, position) VALUES ('kafka', 0) ON CONFLICT DO NOTHING",
    )
    .execute(&db)
    .await
    .unwrap();
    let (_, position) = api.create_org("Acme").await;
    let http = reqwest::Client::new();
    let scrape = || async {
        http.get(format!("{}/metrics", server.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let relay = "quantus_relay_lag_events{relay=\"kafka\"}";
    let organizations = "quantus_projection_lag_seconds{projection=\"organizations\"}";
    let metrics = scrape().await;
    assert!(
        series(&metrics, relay).is_some_and(|lag| lag >= position as f64),
        "{metrics}"
    );
    assert!(
        series(&metrics, organizations).is_some_and(|s| s > 0.0),
        "{metrics}"
    );
    for name in crate::api::KAFKA_ONLY {
        assert!(
            metrics.contains(&format!("\n{name}{{")),
            "{name}: {metrics}"
        );
    }

    sqlx::query("SELECT pg_advisory_unlock(hashtext('quantus-relay:kafka'))")
        .execute(&mut *relay_lease)
        .await
        .unwrap();
    write_organizations(&env.database_url, 200, 4).await;
    eventually(
        "the relay and the model to catch up",
        Duration::from_secs(60),
        || async {
            let m = scrape().await;
            (series(&m, relay) == Some(0.0) && series(&m, organizations) == Some(0.0)).then_some(())
        },
    )
    .await;
}

/// A relay whose lease session ends while its process lives (a terminated backend, a network
/// cut) stops publishing: Postgres released the lock, so another relay may hold it now. It
/// stands by and takes the lease again once it is free. Here the test takes the freed lock
/// itself, as a standby relay would.
#[tokio::test(flavor = "multi_thread")]
async fn s_a_relay_that_loses_its_lease_stops_publishing_until_it_takes_it_again() {
    let env = Env::new().await;
    let dir = temp_dir("pg-lease");
    let db = pool(&env.database_url).await;
    let server = env.serve(&dir, &["--listen", "127.0.0.1:0"]);
    let api = server.client();
    let http = reqwest::Client::new();
    let relay = "quantus_relay_lag_events{relay=\"kafka\"}";
    let lag = || async {
        let m = http
            .get(format!("{}/metrics", server.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        series(&m, relay)
    };
    api.create_org("Before").await;
    eventually("the relay to publish", Duration::from_secs(60), || async {
        (lag().await == Some(0.0)).then_some(())
    })
    .await;

    // End the relay's lease session from outside and take the lock at once.
    let holder_pid: i32 = sqlx::query_scalar(
        // Advisory locks are per database; other tests' relays hold the same key in theirs.
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND objid = ((hashtext('quantus-relay:kafka')::bigint) & 4294967295)::text::oid",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    // The standby queues for the lock first, so it gets it the moment the session ends
    // (before the relay could take it again).
    let mut standby = db.acquire().await.unwrap();
    let waiting = tokio::spawn(async move {
        sqlx::query("SELECT pg_advisory_lock(hashtext('quantus-relay:kafka'))")
            .execute(&mut *standby)
            .await
            .unwrap();
        standby
    });
    eventually(
        "the standby to queue for the lock",
        Duration::from_secs(10),
        || async {
            let queued: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            queued.then_some(())
        },
    )
    .await;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(holder_pid)
        .execute(&db)
        .await
        .unwrap();
    let mut standby = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the relay's lock was not released with its session")
        .unwrap();

    // While the standby holds it, nothing is published: the lag stays.
    let (_, position) = api.create_org("During").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = lag().await;
    assert!(
        during.is_some_and(|l| l >= 1.0),
        "published without the lease: lag {during:?} at position {position}"
    );

    sqlx::query("SELECT pg_advisory_unlock(hashtext('quantus-relay:kafka'))")
        .execute(&mut *standby)
        .await
        .unwrap();
    eventually(
        "the relay to take its lease again and catch up",
        Duration::from_secs(60),
        || async { (lag().await == Some(0.0)).then_some(()) },
    )
    .await;
}

/// Issue 15, item 4: Kafka consumer lag per read model. The organizations projector is stuck
/// in a batch (the test holds its model's update lock; the case librdkafka's statistics could
/// not report): its lag rises to at least the messages written since, while another model's
/// falls to 0; released, it falls to 0 too.
#[tokio::test(flavor = "multi_thread")]
async fn t_kafka_consumer_lag_rises_while_a_projector_is_stuck_and_falls_to_zero() {
    let env = Env::new().await;
    let dir = temp_dir("pg-consumer-lag");
    let db = pool(&env.database_url).await;
    let server = env.serve(&dir, &["--listen", "127.0.0.1:0"]);
    // The projector's batch waits for this lock (`Database::begin_update`).
    let mut held = db.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('organizations'))")
        .execute(&mut *held)
        .await
        .unwrap();
    write_organizations(&env.database_url, 40, 4).await;
    let http = reqwest::Client::new();
    let scrape = || async {
        http.get(format!("{}/metrics", server.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let organizations = "quantus_kafka_consumer_lag_messages{projection=\"organizations\"}";
    let licenses = "quantus_kafka_consumer_lag_messages{projection=\"licenses\"}";
    eventually(
        "the stuck model to lag by the organizations written and another model by none",
        Duration::from_secs(60),
        || async {
            let m = scrape().await;
            (series(&m, organizations)? >= 40.0 && series(&m, licenses)? == 0.0).then_some(())
        },
    )
    .await;

    sqlx::query("SELECT pg_advisory_unlock(hashtext('organizations'))")
        .execute(&mut *held)
        .await
        .unwrap();
    let metrics = eventually(
        "the released model's lag to fall to 0",
        Duration::from_secs(60),
        || async {
            let m = scrape().await;
            (series(&m, organizations) == Some(0.0)).then_some(m)
        },
    )
    .await;
    assert_eq!(
        series(&metrics, "quantus_kafka_lag_errors_total"),
        Some(0.0),
        "{metrics}"
    );
}

/// Issue 15, item 4: a relay and a projector, each in its own process, serve `/metrics`
/// (their own relay lag and publish errors, their Kafka consumer lag), `/healthz` and
/// `/readyz` on `QUANTUS_LISTEN`, and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn u_the_relay_and_projector_roles_serve_their_own_metrics_and_probes() {
    let env = Env::new().await;
    let relay = env.serve(&temp_dir("pg-relay-metrics"), &["--role", "relay"]);
    let projector = env.serve(&temp_dir("pg-projector-metrics"), &["--role", "projector"]);
    let head = write_organizations(&env.database_url, 30, 4).await;
    let http = reqwest::Client::new();
    let get = |url: String, accept: &'static str| {
        let http = http.clone();
        async move {
            let response = http.get(url).header("accept", accept).send().await.unwrap();
            let status = response.status().as_u16();
            let kind = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, kind, response.text().await.unwrap())
        }
    };
    let relay_lag = "quantus_relay_lag_events{relay=\"kafka\"}";
    let metrics = eventually(
        "the relay's own scrape to show it caught up",
        Duration::from_secs(60),
        || async {
            let (status, _, m) = get(format!("{}/metrics", relay.url()), "text/plain").await;
            (status == 200 && series(&m, relay_lag) == Some(0.0)).then_some(m)
        },
    )
    .await;
    assert_eq!(
        series(&metrics, "quantus_relay_publish_errors_total"),
        Some(0.0),
        "{metrics}"
    );
    let organizations = "quantus_kafka_consumer_lag_messages{projection=\"organizations\"}";
    eventually(
        "the projector's own scrape to show its consumer lag fall to 0",
        Duration::from_secs(60),
        || async {
            let (status, _, m) = get(format!("{}/metrics", projector.url()), "text/plain").await;
            (status == 200
                && series(&m, organizations) == Some(0.0)
                && series(&m, "quantus_log_head_position").is_some_and(|h| h >= head as f64))
            .then_some(())
        },
    )
    .await;
    for server in [&relay, &projector] {
        let (status, kind, body) = get(
            format!("{}/metrics", server.url()),
            "application/openmetrics-text",
        )
        .await;
        assert_eq!(status, 200);
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        let (status, _, body) = get(format!("{}/healthz", server.url()), "*/*").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        let (status, _, body) = get(format!("{}/readyz", server.url()), "*/*").await;
        assert_eq!(status, 200, "{body}");
        // Only the operations endpoints: no API, no documents, no consoles.
        for path in [
            "/v1/organizations",
            "/openapi.json",
            "/oauth2/token",
            "/admin",
        ] {
            let (status, kind, _) = get(format!("{}{path}", server.url()), "*/*").await;
            assert_eq!(status, 404, "{path}");
            assert_eq!(kind, "application/problem+json", "{path}");
        }
    }
}

/// Follows redirects from `url` (relative `Location`s resolved against the request's URL) until
/// a page answers; returns where it answered and the page.
async fn visit(browser: &mut crate::qsa::Browser, url: &str) -> (String, crate::qsa::Page) {
    let mut at = url.to_owned();
    for _ in 0..10 {
        let page = browser.get(&at).await;
        match (page.status, &page.location) {
            (301 | 302 | 303 | 307, Some(location)) => {
                at = url::Url::parse(&at)
                    .unwrap()
                    .join(location)
                    .unwrap()
                    .to_string();
            }
            _ => return (at, page),
        }
    }
    panic!("more than 10 redirects from {url}");
}

/// Signs a person in to the console at `start` through QSA's login (and consent) pages, as a
/// browser would; answers the console page it lands on.
async fn console_sign_in(
    qsa: &str,
    start: &str,
    email: &str,
    password: &str,
) -> (crate::qsa::Browser, String, crate::qsa::Page) {
    // Forms are QSA's (login, consent): the browser submits them there.
    let mut browser = crate::qsa::Browser::new(qsa);
    let (at, login) = visit(&mut browser, start).await;
    assert!(
        at.starts_with(&format!("{qsa}/oauth2/authorize")),
        "{start} led to {at}: {} {}",
        login.status,
        login.body
    );
    assert_eq!(login.status, 200, "{}", login.body);
    let mut page = browser
        .submit(&login, &[("email", email), ("password", password)])
        .await;
    if page.status == 200 && page.body.contains("Allow access?") {
        page = browser.submit(&page, &[("decision", "allow")]).await;
    }
    assert_eq!(page.status, 303, "{}", page.body);
    let callback = page.location.unwrap();
    let callback = url::Url::parse(qsa)
        .unwrap()
        .join(&callback)
        .unwrap()
        .to_string();
    let (at, landed) = visit(&mut browser, &callback).await;
    assert_eq!(landed.status, 200, "{at}: {}", landed.body);
    (browser, at, landed)
}

/// The consoles in production shape: two API replicas booting at once on a fresh database and
/// shared data folder register the consoles' clients once, each with the secret both hold; the
/// Admin console is served by the API role, the Portal console by the Portal role (clients of
/// its own, returning to its own public URL), and the Portal's pages that read licences and
/// jobs are answered in that process, which still serves none of those routes to outside
/// callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u_the_api_and_portal_roles_serve_the_consoles() {
    let env = Env::new().await;
    let dir = temp_dir("pg-consoles");
    let api_a = env.serve(&dir, &["--role", "api", "--listen", "127.0.0.1:0"]);
    let api_b = env.serve(&dir, &["--role", "api", "--listen", "127.0.0.1:0"]);
    let _relay = env.serve(&dir, &["--role", "relay"]);
    let _projector = env.serve(&dir, &["--role", "projector"]);
    let qsa = api_a.url().to_owned();

    // Each console file's secret is the one QSA registered (revocation authenticates the
    // client first: 401 for a wrong secret), and both replicas serve the consoles.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for name in ["portal", "admin", "account", "qsa"] {
        let file: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("console-{name}-client.json"))).unwrap(),
        )
        .unwrap();
        let r = http
            .post(format!("{qsa}/oauth2/revoke"))
            .basic_auth(
                file["client_id"].as_str().unwrap(),
                file["client_secret"].as_str(),
            )
            .form(&[("token", "not-a-token")])
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "console-{name}-client.json: {:?}",
            r.text().await
        );
        for server in [&api_a, &api_b] {
            let r = http
                .get(format!("{}/{name}/sign-in", server.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 303, "{} /{name}/sign-in", server.url());
        }
    }

    let platform = api_a.client();
    let (org, _) = platform.create_org("Acme").await;
    crate::portal::register_customer(&platform, &org, "EUR").await;
    let password = "correct horse battery staple";
    let owner = format!("owner+{}@acme.example", Uuid::now_v7().simple());
    let operator = format!("olga+{}@vendor.example", Uuid::now_v7().simple());
    for (organization, email, role) in [
        (org.as_str(), owner.as_str(), "owner"),
        ("platform", operator.as_str(), "platform_admin"),
    ] {
        let r = platform
            .post(
                "/v1/users",
                json!({"organization_id": organization, "email": email, "name": "Ada",
                       "password": password, "roles": [role]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let job = platform
        .post(
            "/v1/jobs",
            json!({"organization_id": org, "backend": "ibm_kyiv", "config": {"shots": 1024}}),
        )
        .await;
    assert_eq!(job.status, 201, "{}", job.body);
    let job = job.body["id"].as_str().unwrap().to_owned();

    // The Portal process issues the contract's licence through QuantumLock and serves the
    // consoles with clients of its own.
    let portal_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("portal-client.json")).unwrap())
            .unwrap();
    let mut vars = env.vars();
    let (id, secret) = (
        portal_file["client_id"].as_str().unwrap().to_owned(),
        portal_file["client_secret"].as_str().unwrap().to_owned(),
    );
    vars.extend([
        ("QUANTUS_QSA_URL", qsa.as_str()),
        ("QUANTUS_QUANTUMLOCK_URL", qsa.as_str()),
        ("QUANTUS_PORTAL_CLIENT_ID", id.as_str()),
        ("QUANTUS_PORTAL_CLIENT_SECRET", secret.as_str()),
    ]);
    let portal = Server::start(
        &dir,
        &["--role", "portal", "--listen", "127.0.0.1:0"],
        &vars,
    );
    let items = json!([{"id": "qpu", "product": "qpu-access", "edition": "pro", "features": ["qpu"],
                        "quotas": {}, "limits": {"qubits": 64}, "quantity": 1, "unit_price": 100,
                        "usage_prices": {}, "max_activations": 2}]);
    let contract =
        crate::portal::active_contract(&platform, &org, items, "2030-01-01T00:00:00Z").await;
    let shown = platform.get(&format!("/v1/contracts/{contract}")).await;
    let licence = shown.body["licenses"]["qpu"].as_str().unwrap().to_owned();
    crate::portal::licence(&platform, &licence, "active").await;
    // The projector (over Kafka) has the organization, job and licence in the read models the
    // pages read (a browser would wait for them the same way).
    let head = platform.head().await;
    all_models_reach(
        &pool(&env.database_url).await,
        head,
        Duration::from_secs(120),
    )
    .await;

    // Outside callers reach only the Portal's own routes at the Portal process.
    let r = http
        .get(format!("{}/v1/licenses/{licence}", portal.url()))
        .bearer_auth(&platform.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "the Portal role serves /v1/licenses outside"
    );
    // The public verify page and what it reads are served by the Portal process too, without a
    // token: the key set QuantumLock publishes and a CRL signed by its licence key.
    let page = http
        .get(format!("{}/verify", portal.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("Verify a licence or an evidence archive"));
    let published: serde_json::Value = http
        .get(format!("{}/verify/keys.json", portal.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids = |set: &serde_json::Value| {
        let mut kids: Vec<String> = set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        kids.sort();
        kids
    };
    assert_eq!(kids(&published), kids(&platform.get("/v1/keys").await.body));
    let crl = http
        .get(format!("{}/verify/crl", portal.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(crl.status(), 200);
    let crl =
        quantus_crypto::document::SignedDocument::from_canonical_json(&crl.bytes().await.unwrap())
            .unwrap();
    assert_eq!(crl.payload["format"], "quantus-crl/1");

    let (mut browser, at, overview) =
        console_sign_in(&qsa, &format!("{}/portal/", portal.url()), &owner, password).await;
    assert_eq!(at, format!("{}/portal/", portal.url()));
    assert!(overview.body.contains("Acme"), "{}", overview.body);
    let base = portal.url().to_owned();
    for (path, expect) in [
        ("/portal/licenses".to_owned(), licence.as_str()),
        (format!("/portal/licenses/{licence}"), "qpu-access"),
        ("/portal/jobs".to_owned(), job.as_str()),
        (format!("/portal/jobs/{job}"), "ibm_kyiv"),
        (format!("/portal/contracts/{contract}"), licence.as_str()),
    ] {
        let page = browser.get(&format!("{base}{path}")).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(
            page.body.contains(expect),
            "{path} lacks {expect}: {}",
            page.body
        );
    }
    let file = browser
        .get(&format!("{base}/portal/licenses/{licence}/file"))
        .await;
    assert_eq!(file.status, 200, "{}", file.body);
    assert!(file.body.contains(&licence), "{}", file.body);

    // The Admin console, served by an API replica, across customers.
    let (mut browser, at, _) =
        console_sign_in(&qsa, &format!("{qsa}/admin/licenses"), &operator, password).await;
    assert_eq!(at, format!("{qsa}/admin/licenses"));
    let page = browser
        .get(&format!("{qsa}/admin/licenses/{licence}"))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("qpu-access"), "{}", page.body);
}
