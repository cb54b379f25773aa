//! Test support: the `reprise-shop` binary as separate processes (fake providers and the
//! service), each test in its own PostgreSQL schema and topic prefix, and a small HTTP
//! client.
//!
//! Needs `DATABASE_URL` and `KAFKA_BOOTSTRAP` (`eval "$(bash scripts/postgres.sh)"`,
//! `eval "$(bash scripts/kafka.sh)"`); without them a test fails and says so.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_reprise-shop");

/// `DATABASE_URL` and `KAFKA_BOOTSTRAP`, or a panic that says how to get them.
pub fn services() -> (String, String) {
    let read = |name: &str, how: &str| match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set: these tests run the service against a real PostgreSQL and \
             Kafka-API broker. Start it with `eval \"$(bash {how})\"; export {name}` (or run \
             scripts/test-all.sh)"
        ),
    };
    (
        read("DATABASE_URL", "scripts/postgres.sh"),
        read("KAFKA_BOOTSTRAP", "scripts/kafka.sh"),
    )
}

/// A schema name (and topic prefix) no other test or run uses: process id, clock, counter.
pub fn namespace(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!(
        "shop_{tag}_{:x}_{:x}{}",
        std::process::id(),
        nanos & 0xff_ffff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    assert!(name.len() <= 40, "namespace {name} too long");
    name
}

/// A directory for a test's logs and files.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("reprise-shop-tests").join(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A running `reprise-shop` process; killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// `http://ADDR` from its `listening on` line.
    pub url: String,
    pub log: PathBuf,
    // Kept open: the process may write to stdout again.
    _stdout: BufReader<ChildStdout>,
}

impl Proc {
    /// Spawns `reprise-shop <args>` with `envs`, stderr to `<dir>/<name>.log`, and waits
    /// (up to `wait`) for its `listening on http://ADDR` line.
    pub fn spawn(
        dir: &Path,
        name: &str,
        args: &[&str],
        envs: &[(&str, String)],
        wait: Duration,
    ) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(BIN);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("RUST_LOG", "info,sqlx=warn");
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn reprise-shop");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            let _ = tx.send(read.map(|_| line));
            reader
        });
        let line = match rx.recv_timeout(wait) {
            Ok(Ok(line)) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{name} did not announce its address ({other:?}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let stdout = reader.join().expect("reader");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"))
            .to_owned();
        Proc {
            name: name.to_owned(),
            child,
            url,
            log,
            _stdout: stdout,
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `reprise-shop <args>` to completion: (exit status, stdout, stderr).
pub fn run(args: &[&str], envs: &[(&str, String)]) -> (ExitStatus, String, String) {
    let mut command = Command::new(BIN);
    command.args(args).env("RUST_LOG", "warn");
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = command.output().expect("run reprise-shop");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One shop: a payment provider, a carrier and the service, in a fresh namespace.
pub struct Shop {
    pub namespace: String,
    pub dir: PathBuf,
    pub database_url: String,
    pub kafka: String,
    pub payment: Proc,
    pub carrier: Proc,
    pub service: Option<Proc>,
    /// Extra environment of every process (the providers and the service).
    pub env: Vec<(&'static str, String)>,
}

/// How to start a [`Shop`].
#[derive(Clone, Debug, Default)]
pub struct ShopOptions {
    pub grace_ms: Option<u64>,
    pub provider_args: Vec<String>,
    /// Extra environment of every process (the providers and the service).
    pub env: Vec<(&'static str, String)>,
}

impl Shop {
    /// Migrates a fresh schema, starts the providers and the service, waits for readiness.
    pub async fn start(tag: &str, options: ShopOptions) -> Shop {
        let (database_url, kafka) = services();
        let namespace = namespace(tag);
        let dir = scratch(&namespace);
        let (status, out, err) = run(
            &["migrate", "--schema", &namespace],
            &[("DATABASE_URL", database_url.clone())],
        );
        assert!(status.success(), "migrate failed: {out}{err}");
        let mut payment_args = vec!["payment-provider", "--listen", "127.0.0.1:0"];
        payment_args.extend(options.provider_args.iter().map(String::as_str));
        let payment = Proc::spawn(
            &dir,
            "payment",
            &payment_args,
            &options.env,
            Duration::from_secs(20),
        );
        let carrier = Proc::spawn(
            &dir,
            "carrier",
            &["carrier", "--listen", "127.0.0.1:0"],
            &options.env,
            Duration::from_secs(20),
        );
        let mut shop = Shop {
            namespace,
            dir,
            database_url,
            kafka,
            payment,
            carrier,
            service: None,
            env: options.env.clone(),
        };
        shop.start_service("service", options.grace_ms).await;
        shop
    }

    /// Starts (or restarts) the service and waits for `/health/ready`.
    pub async fn start_service(&mut self, name: &str, grace_ms: Option<u64>) {
        let mut envs = vec![
            ("DATABASE_URL", self.database_url.clone()),
            ("KAFKA_BOOTSTRAP", self.kafka.clone()),
            ("SHOP_SCHEMA", self.namespace.clone()),
            ("SHOP_TOPIC_PREFIX", format!("{}.", self.namespace)),
            ("SHOP_PAYMENT_URL", self.payment.url.clone()),
            ("SHOP_CARRIER_URL", self.carrier.url.clone()),
            ("SHOP_LISTEN", "127.0.0.1:0".to_owned()),
        ];
        if let Some(grace) = grace_ms {
            envs.push(("SHOP_SHUTDOWN_GRACE_MS", grace.to_string()));
        }
        envs.extend(self.env.iter().cloned());
        let service = Proc::spawn(&self.dir, name, &["serve"], &envs, Duration::from_secs(30));
        let url = service.url.clone();
        self.service = Some(service);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(response) = get(&format!("{url}/health/ready")).await
                && response.status == StatusCode::OK
            {
                return;
            }
            if let Some(status) = self.service_mut().child.try_wait().expect("try_wait") {
                panic!(
                    "the service exited ({status}) before it was ready; log:\n{}",
                    self.service().log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the service was not ready within 90 s; last /health/ready: {:?}; log:\n{}",
                get(&format!("{url}/health/ready")).await.map(|r| r.text()),
                self.service().log_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn service(&self) -> &Proc {
        self.service.as_ref().expect("service started")
    }

    pub fn service_mut(&mut self) -> &mut Proc {
        self.service.as_mut().expect("service started")
    }

    /// The service's base URL.
    pub fn url(&self) -> String {
        self.service().url.clone()
    }

    /// Drops the schema (the broker forgets the topics when it restarts).
    pub async fn drop_schema(&self) {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.database_url)
            .await
            .expect("connect to drop the schema");
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.namespace))
            .execute(&pool)
            .await
            .expect("drop schema");
        pool.close().await;
    }
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Asserts an RFC 9457 problem with `status` and type ending in `slug`.
    pub fn assert_problem(&self, status: u16, slug: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{}",
            self.text()
        );
        let problem = self.json();
        for member in ["type", "title", "detail"] {
            assert!(problem[member].is_string(), "no {member}: {problem}");
        }
        assert_eq!(problem["status"], status, "{problem}");
        let kind = problem["type"].as_str().unwrap_or_default();
        assert!(
            kind.ends_with(&format!("/{slug}")),
            "type {kind}, wanted {slug}"
        );
        problem
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One request; `Err` if no HTTP answer came (refused, reset).
pub async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Answer, String> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client()
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| format!("no answer from {url} within 30 s"))?
}

pub async fn get(url: &str) -> Result<Answer, String> {
    request(Method::GET, url, &[], None).await
}

/// `POST /orders` with a JSON body and an optional idempotency key.
pub async fn post_order(base: &str, body: &str, key: Option<&str>) -> Result<Answer, String> {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    request(
        Method::POST,
        &format!("{base}/orders"),
        &headers,
        Some(body),
    )
    .await
}

/// Polls `GET /orders/{id}` until the order is completed or cancelled.
pub async fn await_terminal(base: &str, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let answer = get(&format!("{base}/orders/{id}")).await;
        if let Ok(answer) = &answer
            && answer.status == StatusCode::OK
        {
            let view = answer.json();
            if matches!(view["status"].as_str(), Some("completed" | "cancelled")) {
                return view;
            }
        }
        assert!(
            Instant::now() < deadline,
            "order {id} not terminal within {limit:?}: {:?}",
            answer.map(|a| a.text())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The samples of a Prometheus exposition: (name, labels text, value). Panics on a line
/// that does not parse.
pub fn samples(exposition: &str) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    for line in exposition.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value on line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|e| panic!("bad value on line {line:?}: {e}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels on {line:?}")),
            ),
            None => (series, ""),
        };
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name on line {line:?}"
        );
        out.push((name.to_owned(), labels.to_owned(), value));
    }
    out
}

/// The sum of every sample of `name` whose labels contain `filter`.
pub fn sum(samples: &[(String, String, f64)], name: &str, filter: &str) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| n == name && labels.contains(filter))
        .map(|(_, _, v)| v)
        .sum()
}

/// Whether `tool` is on the PATH.
pub fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
