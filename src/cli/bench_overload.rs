//! `quantus bench overload`: the API driven past its capacity (issue 17, item 4). Starts a real
//! `quantus serve` (this binary, embedded or on `--database-url`; the write-queue variables of
//! the environment apply), measures its write capacity with a closed loop, then offers a fixed
//! rate of writes (`--rate`, default twice the capacity measured) for `--seconds`, open loop,
//! while a prober reads an organization and introspects a token every 100 ms. Prints goodput,
//! what was shed (503), time-outs, and the latency of accepted writes and of the probes. Prints
//! figures; asserts nothing.

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;
use uuid::Uuid;

/// A client gives up on a request after this long (counted as a time-out).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the closed loop measures capacity.
const CAPACITY_WINDOW: Duration = Duration::from_secs(5);

/// What became of one write.
enum Outcome {
    Accepted(Duration),
    Shed(Duration, bool),
    TimedOut,
    Other(String),
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile of `sorted` (zero when empty).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn spread(what: &str, latencies: &mut [Duration]) {
    latencies.sort();
    println!(
        "  {what:<34} p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  ({})",
        ms(quantile(latencies, 0.5)),
        ms(quantile(latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        latencies.len()
    );
}

async fn write(http: reqwest::Client, base: String, token: String, n: u64) -> Outcome {
    let started = Instant::now();
    let sent = http
        .post(format!("{base}/v1/organizations"))
        .bearer_auth(token)
        .json(&json!({ "name": format!("overload {n}") }))
        .timeout(CLIENT_TIMEOUT)
        .send()
        .await;
    match sent {
        Ok(r) if r.status() == StatusCode::CREATED => Outcome::Accepted(started.elapsed()),
        Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
            let retry_after = r.headers().contains_key(reqwest::header::RETRY_AFTER);
            Outcome::Shed(started.elapsed(), retry_after)
        }
        Ok(r) => Outcome::Other(r.status().to_string()),
        Err(e) if e.is_timeout() => Outcome::TimedOut,
        Err(e) => Outcome::Other(e.to_string()),
    }
}

/// The server under test: a child process, killed when dropped.
struct Served {
    _child: tokio::process::Child,
    base: String,
    dir: std::path::PathBuf,
}

async fn start(database_url: Option<&str>) -> anyhow::Result<Served> {
    let dir = std::env::temp_dir().join(format!("quantus-bench-overload-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("KAFKA_BROKERS")
        .env("QUANTUS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(dir.join("server.log"))?))
        .kill_on_drop(true);
    match database_url {
        Some(url) => cmd.args(["--database-url", url]),
        None => cmd.env_remove("DATABASE_URL"),
    };
    let mut child = cmd.spawn().context("starting quantus serve")?;
    let stdout = child.stdout.take().context("the server's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("quantus listening on ") {
                return anyhow::Ok(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
        anyhow::bail!(
            "the server stopped before it listened; see {}",
            dir.display()
        )
    })
    .await
    .context("the server did not start within 120 s")??;
    // Keep reading its stdout so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Served {
        _child: child,
        base,
        dir,
    })
}

pub async fn run(
    database_url: Option<&str>,
    seconds: u64,
    rate: Option<u64>,
    concurrency: u64,
) -> anyhow::Result<ExitCode> {
    let served = start(database_url).await?;
    let base = served.base.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()?;
    let credentials: Value = serde_json::from_str(&std::fs::read_to_string(
        served.dir.join("bootstrap-client.json"),
    )?)?;
    let (id, secret) = (
        credentials["client_id"].as_str().unwrap_or_default(),
        credentials["client_secret"].as_str().unwrap_or_default(),
    );
    let issued: Value = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = issued["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();
    let probe_org: Value = http
        .post(format!("{base}/v1/organizations"))
        .bearer_auth(&token)
        .json(&json!({"name": "probe"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let probe_org = probe_org["id"].as_str().context("no id")?.to_owned();
    println!(
        "mode: {}; write queue: depth {}, timeout {} ms (QUANTUS_WRITE_QUEUE_*)",
        if database_url.is_some() {
            "postgres"
        } else {
            "embedded sqlite"
        },
        std::env::var("QUANTUS_WRITE_QUEUE_DEPTH").unwrap_or_else(|_| "64".into()),
        std::env::var("QUANTUS_WRITE_QUEUE_TIMEOUT_MS").unwrap_or_else(|_| "2000".into()),
    );

    // 1. Capacity: a closed loop of `concurrency` writers.
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for worker in 0..concurrency {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        writers.spawn(async move {
            let (mut accepted, mut shed) = (0u64, 0u64);
            let mut n = worker * 1_000_000;
            while started.elapsed() < CAPACITY_WINDOW {
                n += 1;
                match write(http.clone(), base.clone(), token.clone(), n).await {
                    Outcome::Accepted(_) => accepted += 1,
                    Outcome::Shed(..) => shed += 1,
                    _ => {}
                }
            }
            (accepted, shed)
        });
    }
    let (mut accepted, mut shed) = (0, 0);
    while let Some(r) = writers.join_next().await {
        let (a, s) = r?;
        accepted += a;
        shed += s;
    }
    let capacity = accepted as f64 / started.elapsed().as_secs_f64();
    println!(
        "capacity (closed loop, {concurrency} writers, {:.0} s): {capacity:.0} writes/s accepted ({shed} shed)",
        CAPACITY_WINDOW.as_secs_f64()
    );

    // 2. Overload: a fixed offered rate, open loop, with probes beside it.
    let offered = rate
        .unwrap_or((2.0 * capacity).ceil().max(1.0) as u64)
        .max(1);
    let total = offered * seconds;
    println!("offered: {offered} writes/s for {seconds} s ({total} writes)");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let prober = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        let (id, secret) = (id.to_owned(), secret.to_owned());
        tokio::spawn(async move {
            let (mut reads, mut introspections, mut failed) = (vec![], vec![], 0u64);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !*stopped.borrow() {
                tick.tick().await;
                let t = Instant::now();
                let read = http
                    .get(format!("{base}/v1/organizations/{probe_org}"))
                    .bearer_auth(&token)
                    .timeout(CLIENT_TIMEOUT)
                    .send()
                    .await;
                match read {
                    Ok(r) if r.status().is_success() => reads.push(t.elapsed()),
                    _ => failed += 1,
                }
                let t = Instant::now();
                let looked = http
                    .post(format!("{base}/oauth2/introspect"))
                    .basic_auth(&id, Some(&secret))
                    .form(&[("token", token.as_str())])
                    .timeout(CLIENT_TIMEOUT)
                    .send()
                    .await;
                match looked {
                    Ok(r) if r.status().is_success() => introspections.push(t.elapsed()),
                    _ => failed += 1,
                }
            }
            (reads, introspections, failed)
        })
    };
    let started = Instant::now();
    let mut requests = JoinSet::new();
    for n in 0..total {
        tokio::time::sleep_until(
            (started + Duration::from_secs_f64(n as f64 / offered as f64)).into(),
        )
        .await;
        requests.spawn(write(http.clone(), base.clone(), token.clone(), n));
    }
    let sent_in = started.elapsed();
    let (mut accepted, mut shed, mut shed_latency) = (vec![], 0u64, vec![]);
    let (mut without_retry_after, mut timeouts, mut others) = (0u64, 0u64, Vec::<String>::new());
    while let Some(outcome) = requests.join_next().await {
        match outcome? {
            Outcome::Accepted(d) => accepted.push(d),
            Outcome::Shed(d, retry_after) => {
                shed += 1;
                shed_latency.push(d);
                without_retry_after += u64::from(!retry_after);
            }
            Outcome::TimedOut => timeouts += 1,
            Outcome::Other(e) => others.push(e),
        }
    }
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    let (mut reads, mut introspections, probes_failed) = prober.await?;
    println!(
        "sent in {:.2} s ({:.0}/s); all answered after {:.2} s",
        sent_in.as_secs_f64(),
        total as f64 / sent_in.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "goodput: {:.0} writes/s accepted ({} of {total}); shed (503): {shed} ({without_retry_after} without Retry-After); client time-outs ({} s): {timeouts}; other answers: {}",
        accepted.len() as f64 / elapsed.as_secs_f64(),
        accepted.len(),
        CLIENT_TIMEOUT.as_secs(),
        others.len()
    );
    others.sort();
    others.dedup();
    for o in others.iter().take(5) {
        println!("  other: {o}");
    }
    spread("accepted writes (201)", &mut accepted);
    spread("shed writes (503)", &mut shed_latency);
    spread("reads during the overload", &mut reads);
    spread("introspections during the overload", &mut introspections);
    println!("  probes that failed: {probes_failed}");
    // Stop the server, then remove the temporary folder this run made for it.
    let dir = served.dir.clone();
    drop(served);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
