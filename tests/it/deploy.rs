//! The Helm chart (`deploy/helm/quantus`): Helm accepts it, what it renders is valid
//! Kubernetes (kubeconform against the schemas of the oldest and the newest release the chart
//! supports), and it has the distributed shape the README promises: several API replicas behind
//! probes and a disruption budget, one active relay by lease, projectors as consumer groups.
//! `scripts/k8s-tools.sh` installs the tools and fails loudly when it cannot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize as _;
use serde_yaml_ng::Value;

use crate::harness::*;

struct Tools {
    helm: PathBuf,
    kubeconform: PathBuf,
    schemas: PathBuf,
    kubernetes_versions: Vec<String>,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let stdout = tool_output(
            &mut Command::new(repo_root().join("scripts/k8s-tools.sh")),
            "run scripts/k8s-tools.sh",
            "Helm, kubeconform or the Kubernetes schemas could not be installed:",
        );
        let line = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
                .unwrap_or_else(|| panic!("scripts/k8s-tools.sh names no {key}: {stdout}"))
        };
        Tools {
            helm: line("HELM").into(),
            kubeconform: line("KUBECONFORM").into(),
            schemas: line("KUBERNETES_SCHEMAS").into(),
            kubernetes_versions: line("KUBERNETES_VERSIONS")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        }
    })
}

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/quantus")
}

fn production_values() -> PathBuf {
    chart().join("ci/production-values.yaml")
}

/// Runs Helm with `args`; answers (success, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(&tools().helm)
        .args(args)
        // Helm's own caches and settings, away from the user's.
        .env("HELM_CACHE_HOME", temp_dir("helm-cache"))
        .env("HELM_CONFIG_HOME", temp_dir("helm-config"))
        .env("HELM_DATA_HOME", temp_dir("helm-data"))
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` of the chart with the extra `args`; panics with Helm's words on failure.
fn render(args: &[&str]) -> String {
    let chart = chart();
    let mut all = vec!["template", "quantus", chart.to_str().unwrap()];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = helm(&all);
    assert!(ok, "helm template {args:?} failed:\n{stderr}");
    stdout
}

fn documents(rendered: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(rendered)
        .map(|d| Value::deserialize(d).expect("helm renders YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn container(workload: &Value) -> &Value {
    let containers = workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container per role");
    &containers[0]
}

fn args(workload: &Value) -> Vec<&str> {
    container(workload)["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(text)
        .collect()
}

fn env_names(workload: &Value) -> Vec<&str> {
    container(workload)["env"]
        .as_sequence()
        .map(|env| env.iter().map(|e| text(&e["name"])).collect())
        .unwrap_or_default()
}

fn env<'a>(workload: &'a Value, name: &str) -> &'a Value {
    container(workload)["env"]
        .as_sequence()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {workload:?}"))
}

/// The variable names `docs/configuration.md` documents: every backticked upper-case name in
/// its table (the `AWS_*` ones are named in the object store's row).
fn documented_variables() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    doc.lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            l.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|w| {
            w.len() > 2
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

#[test]
fn helm_lints_the_chart_and_kubeconform_accepts_what_it_renders() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let production = production_values();
    let production = production.to_str().unwrap();
    for values in [vec![], vec!["-f", production]] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend_from_slice(&values);
        let (ok, stdout, stderr) = helm(&args);
        assert!(ok, "helm lint --strict {values:?}:\n{stdout}\n{stderr}");
    }
    let tools = tools();
    let dir = temp_dir("kubeconform");
    for (label, values) in [("default", vec![]), ("production", vec!["-f", production])] {
        let manifest = dir.join(format!("{label}.yaml"));
        std::fs::write(&manifest, render(&values)).unwrap();
        for version in &tools.kubernetes_versions {
            let location = format!(
                "{}/{{{{ .NormalizedKubernetesVersion }}}}-local{{{{ .StrictSuffix }}}}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
                tools.schemas.display()
            );
            check_kubeconform(&tools.kubeconform, version, &location, &manifest);
        }
    }
}

/// kubeconform -strict (unknown fields are errors) with the local schemas only: a kind
/// without a schema is an error too, never skipped.
fn check_kubeconform(kubeconform: &Path, version: &str, location: &str, manifest: &Path) {
    let stdout = tool_output(
        Command::new(kubeconform)
            .args(["-strict", "-summary", "-output", "text"])
            .args(["-kubernetes-version", version])
            .args(["-schema-location", location])
            .arg(manifest),
        "run kubeconform",
        &format!(
            "kubeconform (Kubernetes {version}) refuses {}:",
            manifest.display()
        ),
    );
    assert!(
        stdout.contains(", Invalid: 0, Errors: 0, Skipped: 0"),
        "kubeconform (Kubernetes {version}): {stdout}"
    );
    let valid: usize = stdout
        .split("Valid: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(
        valid >= 10,
        "kubeconform saw only {valid} resources: {stdout}"
    );
}

#[test]
fn the_chart_runs_several_apis_one_active_relay_by_lease_and_projectors_as_consumer_groups() {
    let documented = documented_variables();
    for (label, values) in [
        ("default", vec![]),
        (
            "production",
            vec![
                "-f".to_owned(),
                production_values().to_str().unwrap().to_owned(),
            ],
        ),
    ] {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let docs = documents(&render(&values));

        // Several API replicas, each probed, kept up through drains by a disruption budget.
        let api = find(&docs, "Deployment", "quantus-api");
        let replicas = api["spec"]["replicas"].as_u64().unwrap();
        assert!(replicas >= 2, "{label}: {replicas} API replicas");
        assert_eq!(&args(api)[..3], ["serve", "--role", "api"], "{label}");
        let probe =
            |role: &Value, kind: &str| text(&container(role)[kind]["httpGet"]["path"]).to_owned();
        assert_eq!(probe(api, "readinessProbe"), "/readyz", "{label}");
        assert_eq!(probe(api, "livenessProbe"), "/healthz", "{label}");
        let pdb = find(&docs, "PodDisruptionBudget", "quantus-api");
        let min = pdb["spec"]["minAvailable"].as_u64().unwrap();
        assert!(
            min >= 1 && min < replicas,
            "{label}: minAvailable {min} of {replicas}"
        );
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"], api["spec"]["selector"]["matchLabels"],
            "{label}: the budget covers the API pods"
        );
        let service = find(&docs, "Service", "quantus-api");
        assert_eq!(
            service["spec"]["selector"],
            api["spec"]["selector"]["matchLabels"]
        );

        // The relay: standbys wait for the active one's Postgres lease, so they need the
        // Postgres URL.
        let relay = find(&docs, "Deployment", "quantus-relay");
        assert!(relay["spec"]["replicas"].as_u64().unwrap() >= 2, "{label}");
        assert_eq!(args(relay), ["serve", "--role", "relay"], "{label}");
        assert!(env_names(relay).contains(&"DATABASE_URL"), "{label}");

        // Projectors: one StatefulSet, each pod its own static member name, the consumer
        // groups named from the one shared topic prefix (no replica sets its own).
        let projector = find(&docs, "StatefulSet", "quantus-projector");
        assert!(
            projector["spec"]["replicas"].as_u64().unwrap() >= 2,
            "{label}"
        );
        assert_eq!(args(projector), ["serve", "--role", "projector"], "{label}");
        assert_eq!(
            env(projector, "QUANTUS_KAFKA_INSTANCE_ID")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name",
            "{label}"
        );
        // The relay and the projectors serve their metrics and probes on their port (every
        // interface), probed on /healthz, scraped through the usual annotations, and let
        // through by their network policy.
        for worker in [relay, projector] {
            let port = container(worker)["ports"][0]["containerPort"]
                .as_u64()
                .unwrap();
            assert_eq!(container(worker)["ports"][0]["name"], "http", "{label}");
            assert_eq!(
                env(worker, "QUANTUS_LISTEN")["value"],
                format!("0.0.0.0:{port}").as_str(),
                "{label}"
            );
            for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
                assert_eq!(probe(worker, kind), "/healthz", "{label}: {kind}");
            }
            let annotations = &worker["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(annotations["prometheus.io/scrape"], "true", "{label}");
            assert_eq!(annotations["prometheus.io/path"], "/metrics", "{label}");
            assert_eq!(
                annotations["prometheus.io/port"],
                port.to_string().as_str(),
                "{label}"
            );
        }
        let workers = find(&docs, "NetworkPolicy", "quantus-workers");
        assert_eq!(
            workers["spec"]["ingress"][0]["ports"][0]["port"], "http",
            "{label}: the workers' policy admits scrapes and probes on their HTTP port"
        );
        let config = find(&docs, "ConfigMap", "quantus");
        for workload in [api, relay, projector] {
            assert!(
                !env_names(workload).contains(&"QUANTUS_KAFKA_TOPIC_PREFIX"),
                "{label}: a role sets its own topic prefix, so its consumer groups differ"
            );
            assert_eq!(
                container(workload)["envFrom"][0]["configMapRef"]["name"],
                "quantus",
                "{label}: every role reads the one ConfigMap"
            );
        }

        // The Portal trusts the API's issuer and asks the API Service for licences.
        let portal = find(&docs, "Deployment", "quantus-portal");
        assert_eq!(&args(portal)[..3], ["serve", "--role", "portal"], "{label}");
        assert_eq!(probe(portal, "readinessProbe"), "/readyz", "{label}");
        assert_eq!(
            env(portal, "QUANTUS_QSA_URL")["value"],
            env(api, "QUANTUS_PUBLIC_URL")["value"],
            "{label}"
        );
        assert_eq!(
            env(portal, "QUANTUS_QUANTUMLOCK_URL")["value"],
            "http://quantus-api:8080"
        );

        // Unprivileged (the image's user), read-only root file system, secrets only by
        // reference, and every variable one that docs/configuration.md documents.
        let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
        for workload in [api, relay, projector, portal] {
            let pod = &workload["spec"]["template"]["spec"]["securityContext"];
            assert_eq!(pod["runAsNonRoot"], true, "{label}");
            let uid = pod["runAsUser"].as_u64().unwrap();
            assert!(
                dockerfile.contains(&format!("--uid {uid} ")),
                "the image has no user {uid}"
            );
            let security = &container(workload)["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{label}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{label}");
            for name in env_names(workload) {
                assert!(
                    documented.contains(name),
                    "{label}: {name} is not in docs/configuration.md"
                );
            }
            for secret in ["DATABASE_URL", "KAFKA_BROKERS", "QUANTUS_MASTER_KEY"] {
                assert!(
                    env(workload, secret)["valueFrom"]["secretKeyRef"]["key"] == secret,
                    "{label}: {secret} is not taken from the Secret"
                );
            }
        }
        let data = config["data"].as_mapping().expect("ConfigMap data");
        assert!(!data.is_empty());
        for name in data.keys() {
            assert!(
                documented.contains(text(name)),
                "{label}: {name:?} is not in docs/configuration.md"
            );
        }
        for secret in [
            "DATABASE_URL",
            "KAFKA_BROKERS",
            "QUANTUS_MASTER_KEY",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(
                !data.contains_key(secret),
                "{label}: {secret} is in the ConfigMap"
            );
        }
        assert!(
            docs.iter().all(|d| d["kind"] != "Secret"),
            "{label}: the chart makes a Secret (its values would sit in Helm's release history)"
        );
    }
}

/// What the chart's shape leans on in the code: the relay's lease is a Postgres advisory lock
/// per relay name, and a projector's consumer group is named from the topic prefix and the
/// read model alone (so equal configuration means one group).
#[test]
fn the_relay_lease_and_the_consumer_groups_the_chart_describes_are_the_code_s() {
    let relay = std::fs::read_to_string(repo_root().join("infra/src/relay.rs")).unwrap();
    assert!(relay.contains("pg_try_advisory_lock(hashtext($1))"));
    assert!(relay.contains("format!(\"quantus-relay:{}\", self.name)"));
    assert!(relay.contains("DEFAULT_NAME: &'static str = \"kafka\""));
    let values = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    assert!(values.contains("pg_try_advisory_lock(hashtext('quantus-relay:kafka'))"));
    let runner = std::fs::read_to_string(repo_root().join("projections/src/runner.rs")).unwrap();
    assert!(runner.contains("\"{}quantus.projection.{}\",\n            kafka.topic_prefix,"));
    assert!(values.contains("<QUANTUS_KAFKA_TOPIC_PREFIX>quantus.projection.<model>"));
}

/// Several API replicas share DATA_DIR (the sealed signing keys among it): a volume only one
/// node can mount is refused with the reason, rather than leaving replicas unschedulable; so
/// is a disruption budget that would block every drain.
#[test]
fn several_api_replicas_without_a_shared_volume_are_refused() {
    let chart = chart();
    let (ok, _, stderr) = helm(&[
        "template",
        "quantus",
        chart.to_str().unwrap(),
        "--set",
        "persistence.accessModes={ReadWriteOnce}",
    ]);
    assert!(
        !ok,
        "rendered with a ReadWriteOnce volume for two API replicas"
    );
    assert!(stderr.contains("ReadWriteMany"), "{stderr}");
    // One replica may use any volume (and gets no disruption budget, which would block
    // every drain).
    let single = documents(&render(&[
        "--set",
        "persistence.accessModes={ReadWriteOnce}",
        "--set",
        "api.replicas=1",
    ]));
    assert!(single.iter().all(|d| d["kind"] != "PodDisruptionBudget"));
    // A budget that allows no disruption is refused too.
    let (ok, _, stderr) = helm(&[
        "template",
        "quantus",
        chart.to_str().unwrap(),
        "--set",
        "api.minAvailable=2",
    ]);
    assert!(!ok, "rendered a budget of 2 for 2 API replicas");
    assert!(
        stderr.contains("api.minAvailable must be below"),
        "{stderr}"
    );
}
