//! The one test harness: real services via the scripts, `quantus` processes, HTTP clients.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quantus"))
}

/// Runs `scripts/NAME start` and returns the value of its `KEY=VALUE` line. Panics with the
/// script's own words when the service cannot be started: never skips.
fn start_service(script: &str, key: &str) -> String {
    let output = Command::new("bash")
        .arg(repo_root().join("scripts").join(script))
        .arg("start")
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned));
    match (output.status.success(), value) {
        (true, Some(v)) => v,
        _ => panic!(
            "scripts/{script} start failed ({}): the test needs this service.\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Headless Chromium and Playwright for the browser tests, installed by `scripts/browser.sh`
/// (fails loudly when they cannot be had); returns Chromium's path.
pub fn chromium() -> String {
    installed(
        "scripts/browser.sh",
        "Chromium or Playwright could not be installed:",
        "CHROMIUM",
    )
}

/// Runs an install script of `scripts/` (failing with `refused` and its output) and returns
/// the path it prints as `NAME=<path>`.
pub fn installed(script: &str, refused: &str, name: &str) -> String {
    let prefix = format!("{name}=");
    tool_output(
        &mut Command::new(repo_root().join(script)),
        &format!("run {script}"),
        refused,
    )
    .lines()
    .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_owned))
    .unwrap_or_else(|| panic!("{script} names no {prefix}<path>"))
}

/// The Postgres server for this test run (started once).
pub fn postgres_server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| start_service("postgres.sh", "DATABASE_URL"))
}

/// The Kafka broker for this test run (started once).
pub fn kafka_brokers() -> &'static str {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS.get_or_init(|| start_service("kafka.sh", "KAFKA_BROKERS"))
}

/// A Kafka broker of one test's own (its own state folder and ports) that the test may halt
/// and resume; the shared broker stays up for every other test. Stopped and deleted on drop.
pub struct OwnKafka {
    dir: PathBuf,
    pub brokers: String,
}

impl OwnKafka {
    pub fn start(label: &str) -> OwnKafka {
        let dir = temp_dir(&format!("kafka-{label}"));
        let brokers = Self::run(&dir, "start")
            .unwrap_or_else(|e| panic!("scripts/kafka.sh start failed: the test needs it.\n{e}"));
        OwnKafka { dir, brokers }
    }

    fn run(dir: &Path, action: &str) -> Result<String, String> {
        let output = Command::new("bash")
            .arg(repo_root().join("scripts/kafka.sh"))
            .arg(action)
            .env("QUANTUS_SERVICES_DIR", dir)
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run scripts/kafka.sh: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "scripts/kafka.sh {action}: {}\nstdout:\n{stdout}\nstderr:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(stdout
            .lines()
            .find_map(|l| l.strip_prefix("KAFKA_BROKERS=").map(str::to_owned))
            .unwrap_or_default())
    }

    /// Stops the broker process; its data stays.
    pub fn halt(&self) {
        Self::run(&self.dir, "halt").unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the halted broker again, on the same port with the same data.
    pub fn resume(&self) {
        let brokers = Self::run(&self.dir, "resume").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(brokers, self.brokers, "the broker came back elsewhere");
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        if let Err(e) = Self::run(&self.dir, "stop") {
            eprintln!("{e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The S3-protocol server for this test run (started once): `AWS_*` variables for
/// `object_store`, and the bucket.
pub fn s3() -> &'static (Vec<(String, String)>, String) {
    static S3: OnceLock<(Vec<(String, String)>, String)> = OnceLock::new();
    S3.get_or_init(|| {
        let get = |key: &str| start_service("s3.sh", key);
        let vars = vec![
            ("AWS_ENDPOINT".to_owned(), get("S3_ENDPOINT")),
            ("AWS_ACCESS_KEY_ID".to_owned(), get("S3_ACCESS_KEY_ID")),
            (
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                get("S3_SECRET_ACCESS_KEY"),
            ),
            ("AWS_REGION".to_owned(), get("S3_REGION")),
            ("AWS_ALLOW_HTTP".to_owned(), "true".to_owned()),
        ];
        (vars, get("S3_BUCKET"))
    })
}

/// A new, empty database on the test Postgres server.
pub async fn fresh_database() -> String {
    let server = postgres_server();
    sqlx::any::install_default_drivers();
    let name = format!("t_{}", Uuid::now_v7().simple());
    let admin = sqlx::AnyPool::connect(server)
        .await
        .expect("connect to test Postgres");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let (base, _) = server.rsplit_once('/').expect("URL with a database name");
    format!("{base}/{name}")
}

/// This run's folder for temporary data, `TMP/quantus-it/<pid>`. The folders of earlier runs
/// whose process is gone are removed the first time: a run leaves its data for a look after a
/// failure, until the next run, instead of filling the disk.
fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join("quantus-it");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let pid = entry.file_name().to_string_lossy().into_owned();
                if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(&pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// A fresh temporary folder.
/// A free local port, for a server whose public URL must be known before it starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn temp_dir(label: &str) -> PathBuf {
    let dir = run_dir().join(format!("{label}-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `quantus ARGS` to completion.
pub fn quantus(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BROKERS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run quantus")
}

/// A running `quantus serve` process; killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub url: Option<String>,
    pub data_dir: PathBuf,
    pub first_stdout: String,
}

impl Server {
    /// Starts `quantus serve --data-dir DATA_DIR ARGS` and waits until it reports it runs.
    pub fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("KAFKA_BROKERS")
            .env("QUANTUS_LOG", "info,sqlx=warn")
            // Tests count events: scheduled checkpoints only where a test asks for them.
            .env("QUANTUS_CHECKPOINT_EVENTS", "1000000000")
            .env("QUANTUS_CHECKPOINT_SECONDS", "86400")
            // Dozens of servers share two cores while the suite runs: a write may take longer
            // than the production queue deadline (2 s from arrival) without the server being
            // overloaded in the sense load shedding means. The shedding tests set their own.
            .env("QUANTUS_WRITE_QUEUE_TIMEOUT_MS", "30000")
            // Every role listens (a relay or a projector for its metrics): on a free port
            // unless the test says where.
            .env("QUANTUS_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn quantus serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                seen.push_str(&line);
                seen.push('\n');
                if line.starts_with("quantus listening on ") || line.contains(" role running") {
                    let _ = tx.send(seen.clone());
                }
            }
        });
        let seen = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(seen) => seen,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "quantus serve did not start; log:\n{}",
                    std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default()
                );
            }
        };
        let url = seen.lines().find_map(|l| {
            l.strip_prefix("quantus listening on ").map(|rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        });
        Server {
            child,
            url,
            data_dir: data_dir.to_owned(),
            first_stdout: seen,
        }
    }

    /// Starts the embedded default (no configuration) on a free port.
    pub fn embedded(data_dir: &Path) -> Server {
        Server::start(data_dir, &["--listen", "127.0.0.1:0"], &[])
    }

    pub fn url(&self) -> &str {
        self.url.as_deref().expect("this role serves no HTTP")
    }

    pub fn client(&self) -> Api {
        Api {
            base: self.url().to_owned(),
            token: token(self),
            http: reqwest::Client::new(),
        }
    }

    /// Whether the process is still alive (it has not exited or aborted).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, as an orchestrator stopping it would; waits at most `within` for the exit
    /// (then kills it) and returns how long it took and whether it exited successfully.
    pub fn terminate(&mut self, within: Duration) -> (Duration, bool) {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (started.elapsed(), status.success());
            }
            if started.elapsed() > within {
                self.kill();
                return (started.elapsed(), false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bootstrap admin's client id and secret, as the first start wrote them.
pub fn bootstrap_credentials(data_dir: &Path) -> (String, String) {
    let text = std::fs::read_to_string(data_dir.join("bootstrap-client.json"))
        .expect("bootstrap-client.json");
    let v: Value = serde_json::from_str(&text).expect("bootstrap-client.json is JSON");
    (
        v["client_id"].as_str().expect("client_id").to_owned(),
        v["client_secret"]
            .as_str()
            .expect("client_secret")
            .to_owned(),
    )
}

/// An access token with the client-credentials grant (blocking: usable from sync helpers).
pub fn client_token(base: &str, client_id: &str, secret: &str, scope: Option<&str>) -> String {
    let url = format!("{base}/oauth2/token");
    let (id, secret) = (client_id.to_owned(), secret.to_owned());
    let scope = scope.map(str::to_owned);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut form = vec![("grant_type", "client_credentials".to_owned())];
            if let Some(s) = scope {
                form.push(("scope", s));
            }
            let res = reqwest::Client::new()
                .post(url)
                .basic_auth(id, Some(secret))
                .form(&form)
                .send()
                .await
                .expect("token request");
            let status = res.status();
            let body: Value = res.json().await.expect("token response");
            assert!(status.is_success(), "token endpoint: {status} {body}");
            body["access_token"].as_str().unwrap().to_owned()
        })
    })
    .join()
    .unwrap()
}

/// A platform-admin access token for `server` (the bootstrap admin's).
/// What `POST /oauth2/introspect` says of `token`, asked as the client `client_id`.
pub async fn introspection(base: &str, client_id: &str, secret: &str, token: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{base}/oauth2/introspect"))
        .basic_auth(client_id, Some(secret))
        .form(&[("token", token)])
        .send()
        .await
        .expect("introspect")
        .json()
        .await
        .expect("introspection JSON")
}

pub fn token(server: &Server) -> String {
    let (id, secret) = bootstrap_credentials(&server.data_dir);
    client_token(server.url(), &id, &secret, None)
}

/// A small authenticated client.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Api {
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    pub async fn send(&self, builder: reqwest::RequestBuilder) -> Reply {
        let response = builder.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(self.request(reqwest::Method::PUT, path).json(&body))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value, if_match: Option<u64>) -> Reply {
        let mut b = self.request(reqwest::Method::PATCH, path).json(&body);
        if let Some(v) = if_match {
            b = b.header("if-match", format!("\"{v}\""));
        }
        self.send(b).await
    }

    /// Creates an organization; returns (id, position).
    pub async fn create_org(&self, name: &str) -> (String, u64) {
        let r = self
            .post("/v1/organizations", serde_json::json!({ "name": name }))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        (
            r.body["id"].as_str().unwrap().to_owned(),
            r.body["position"].as_u64().unwrap(),
        )
    }

    /// The events of one aggregate type (the platform also records its own bootstrap: the
    /// crypto policy and keys).
    pub async fn events_of(&self, aggregate_type: &str) -> Vec<Value> {
        self.all_events()
            .await
            .into_iter()
            .filter(|e| e["envelope"]["aggregate_type"] == aggregate_type)
            .collect()
    }

    /// The log's current last position.
    pub async fn head(&self) -> u64 {
        self.all_events()
            .await
            .last()
            .map_or(0, |e| e["position"].as_u64().unwrap())
    }

    /// All events of the log, via the subscriber API.
    pub async fn all_events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let r = self
                .get(&format!("/v1/events?after={after}&limit=1000"))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            let events = r.body["events"].as_array().unwrap().clone();
            if events.is_empty() {
                return out;
            }
            after = r.body["next_after"].as_u64().unwrap();
            out.extend(events);
        }
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `quantus projections dump NAME` for a store.
pub fn dump(name: &str, store: &[&str]) -> String {
    let mut args = vec!["projections", "dump", name];
    args.extend_from_slice(store);
    let out = quantus(&args, &[]);
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts that a read model equals what a full replay of the log builds.
pub fn assert_model_equals_replay(name: &str, store: &[&str]) {
    let live = dump(name, store);
    let mut args = vec!["projections", "rebuild", name];
    args.extend_from_slice(store);
    let out = quantus(&args, &[]);
    assert!(
        out.status.success(),
        "rebuild failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rebuilt = dump(name, store);
    assert!(!live.is_empty(), "the live model is empty");
    assert_eq!(
        live, rebuilt,
        "the live read model differs from a replay of the log"
    );
}

/// Runs a tool a test relies on and answers what it printed; fails the test when the tool
/// cannot start (`needs` says what it takes) or does not succeed (`refused`, then its output
/// and its errors).
pub fn tool_output(command: &mut Command, needs: &str, refused: &str) -> String {
    let out = command.output().expect(needs);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{refused}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a `node --test` suite of `tests/browser` (Playwright): every test passes, and there
/// are `passes` of them (a suite that lost a test fails too).
pub fn browser_suite_passes(command: &mut Command, passes: usize) {
    let stdout = tool_output(
        command.current_dir(repo_root().join("tests/browser")),
        "node is needed for the browser tests",
        "",
    );
    assert!(
        stdout.contains("# fail 0") && stdout.contains(&format!("# pass {passes}")),
        "{stdout}"
    );
}

/// Runs one of the independent auditor's verifiers (`tests/auditor/<script>`, Python) with
/// `args`: (whether it found the evidence sound, its report). Exit 2 means it could not judge
/// at all (missing ML-DSA or `rfc8785`, unreadable input), which fails the test there.
pub fn independent_verifier<I, S>(script: &str, args: I) -> (bool, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new("python3")
        .arg(repo_root().join("tests/auditor").join(script))
        .args(args)
        .output()
        .expect("python3 is needed for the independent auditor");
    verdict(
        out,
        &format!("{script} could not run (is tests/auditor's rfc8785 installed?)"),
    )
}

/// A verifier's verdict: (passed, stdout). Exit code 2 means it could not run at all, which
/// fails the test with `could_not_run` and its stderr rather than counting as a refusal.
pub fn verdict(out: Output, could_not_run: &str) -> (bool, String) {
    assert_ne!(
        out.status.code(),
        Some(2),
        "{could_not_run}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `quantus audit verify` over a store; returns (success, stdout).
pub fn audit_verify(args: &[&str]) -> (bool, String) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out = quantus(&all, &[]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Writes `count` new organizations straight through the command pipeline (no HTTP), from
/// `concurrency` tasks; returns the log head afterwards.
pub async fn write_organizations(database_url: &str, count: usize, concurrency: usize) -> u64 {
    use quantus_commands::CommandBus;
    use quantus_domain::organization::OrganizationCommand;
    use quantus_domain::{Actor, ActorKind, CommandContext};
    let db = quantus_infra::Database::open(Some(database_url), &temp_dir("writer"))
        .await
        .unwrap();
    let bus = CommandBus::new(quantus_infra::SqlEventRepository::new(db.clone()));
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in (w..count).step_by(concurrency) {
                    let id = Uuid::now_v7().to_string();
                    let ctx = CommandContext {
                        tenant_id: id.clone(),
                        actor: Actor {
                            kind: ActorKind::System,
                            id: "test-writer".into(),
                        },
                        occurred_at: quantus_domain::envelope::truncate_to_micros(
                            chrono::Utc::now(),
                        ),
                        correlation_id: Uuid::now_v7(),
                        causation_id: Uuid::now_v7(),
                    };
                    bus.organization(
                        &ctx,
                        &id,
                        OrganizationCommand::Create {
                            name: format!("Org {i}"),
                        },
                        Some(0),
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    db.head_position().await.unwrap()
}

/// A pool on a test database, for looking at (or tampering with) its tables.
pub async fn pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.expect("connect")
}

/// `quantus events tail --no-follow` against a server: the log as parsed JSON lines.
pub fn tail_log(server: &Server) -> Vec<Value> {
    let token = token(server);
    let out = quantus(
        &[
            "events",
            "tail",
            "--url",
            server.url(),
            "--token",
            &token,
            "--no-follow",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Waits until read model `projection` has applied every event of `aggregate_type` in the
/// database at `url` (before a test stops the server and compares the model with a replay).
pub async fn wait_for_projection(url: &str, projection: &str, aggregate_type: &str) {
    let db = pool(url).await;
    let sql = "SELECT COUNT(*) FROM (SELECT aggregate_id, MAX(sequence) AS s FROM events WHERE aggregate_type = $1 GROUP BY aggregate_id) e \
               LEFT JOIN projection_streams p ON p.projection = $2 AND p.aggregate_type = $1 AND p.aggregate_id = e.aggregate_id AND p.sequence = e.s \
               WHERE p.aggregate_id IS NULL";
    eventually(
        &format!("the {projection} read model to catch up"),
        Duration::from_secs(60),
        || {
            let db = db.clone();
            async move {
                let behind: i64 = sqlx::query_scalar(sql)
                    .bind(aggregate_type)
                    .bind(projection)
                    .fetch_one(&db)
                    .await
                    .unwrap();
                (behind == 0).then_some(())
            }
        },
    )
    .await;
    db.close().await;
}

/// Every read model of the platform (each one's high-water mark covers the whole log).
pub const READ_MODELS: [&str; 6] = [
    "organizations",
    "licenses",
    "users",
    "groups",
    "jobs",
    "commercial",
];

/// The read models whose high-water mark is below `position`, with their marks.
pub async fn models_behind(db: &sqlx::AnyPool, position: u64) -> Vec<(String, u64)> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT projection, position FROM projection_watermarks")
            .fetch_all(db)
            .await
            .unwrap();
    READ_MODELS
        .iter()
        .map(|name| {
            let mark = rows
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, p)| *p as u64);
            ((*name).to_owned(), mark)
        })
        .filter(|(_, mark)| *mark < position)
        .collect()
}

/// Waits until every read model has seen every position up to `position`; panics after
/// `timeout` naming the models still behind. Returns how long it took.
pub async fn all_models_reach(db: &sqlx::AnyPool, position: u64, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let behind = models_behind(db, position).await;
        if behind.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "read models still behind position {position} after {timeout:?}: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
