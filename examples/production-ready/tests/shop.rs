//! The service as a deployment runs it: the `reprise-shop` binary as separate processes
//! (fake payment provider, fake carrier, the service) against the real PostgreSQL and
//! Kafka-API broker, each test in its own schema and topic prefix.
//!
//! Needs `DATABASE_URL` and `KAFKA_BOOTSTRAP` (`eval "$(bash scripts/postgres.sh)"`,
//! `eval "$(bash scripts/kafka.sh)"`); the Prometheus test also needs `prometheus` and
//! `promtool` (Debian package `prometheus`).

// A test of processes: it sleeps, reads the wall clock and reads child output on threads.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use parking_lot::Mutex;
use reprise_core::{EventStore, StreamId};
use reprise_postgres::{MigrationMode, PgConfig, PgEventStore};
use support::{Shop, ShopOptions, get, post_order, request, run, sum};

fn order(sku: &str, quantity: i64) -> String {
    serde_json::json!({"customer": "ada", "lines": [{"sku": sku, "quantity": quantity}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_reach_an_end_and_every_refusal_is_a_problem() {
    let shop = Shop::start("api", ShopOptions::default()).await;
    let base = shop.url();

    // Health: all three answer ok once ready.
    for path in ["/health/live", "/health/startup", "/health/ready"] {
        let answer = get(&format!("{base}{path}")).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.text());
        let report = answer.json();
        assert_eq!(report["status"], "ok", "{path}: {report}");
        assert!(report["checks"].is_object(), "{path}: {report}");
    }
    let startup = get(&format!("{base}/health/startup")).await.unwrap().json();
    for check in ["migrations", "broker", "catalog", "services", "sagas"] {
        assert_eq!(
            startup["checks"][check]["status"], "ok",
            "{check}: {startup}"
        );
    }
    let ready = get(&format!("{base}/health/ready")).await.unwrap().json();
    for check in [
        "startup",
        "shutdown",
        "postgres",
        "broker",
        "consumers",
        "breakers",
    ] {
        assert_eq!(ready["checks"][check]["status"], "ok", "{check}: {ready}");
    }

    // An order, and the same request again under the same key: one order.
    let body = order("beans-1kg", 2);
    let first = post_order(&base, &body, Some("key-1")).await.unwrap();
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text());
    let id = first.json()["order_id"].as_str().unwrap().to_owned();
    assert_eq!(
        first.header("location").as_deref(),
        Some(format!("/orders/{id}").as_str())
    );
    let again = post_order(&base, &body, Some("key-1")).await.unwrap();
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text());
    assert_eq!(again.json()["order_id"], id.as_str());
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    // Copies racing each other.
    let racing =
        futures::future::join_all((0..5).map(|_| post_order(&base, &body, Some("key-2")))).await;
    let raced: BTreeSet<String> = racing
        .into_iter()
        .map(|answer| {
            let answer = answer.unwrap();
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
            answer.json()["order_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        raced.len(),
        1,
        "five copies of one keyed request, one order"
    );
    // The same key for a different request.
    post_order(&base, &order("beans-1kg", 3), Some("key-1"))
        .await
        .unwrap()
        .assert_problem(422, "idempotency-key-reused");

    // Refusals.
    post_order(&base, "{\"customer\": ", None)
        .await
        .unwrap()
        .assert_problem(400, "malformed-json");
    let missing = post_order(&base, r#"{"lines": []}"#, None)
        .await
        .unwrap()
        .assert_problem(422, "invalid-order");
    assert!(
        missing["detail"].as_str().unwrap().contains("customer"),
        "{missing}"
    );
    let no_lines = post_order(&base, r#"{"customer": "ada"}"#, None)
        .await
        .unwrap()
        .assert_problem(422, "invalid-order");
    assert!(
        no_lines["detail"].as_str().unwrap().contains("lines"),
        "{no_lines}"
    );
    let zero = post_order(&base, &order("beans-1kg", 0), None)
        .await
        .unwrap()
        .assert_problem(422, "invalid-order");
    assert!(
        zero["detail"]
            .as_str()
            .unwrap()
            .contains("/lines/0/quantity"),
        "{zero}"
    );
    let unknown = post_order(&base, &order("unicorn", 1), None)
        .await
        .unwrap()
        .assert_problem(422, "unknown-sku");
    assert!(
        unknown["detail"].as_str().unwrap().contains("\"unicorn\""),
        "{unknown}"
    );
    assert_eq!(unknown["sku"], "unicorn");
    request(
        Method::POST,
        &format!("{base}/orders"),
        &[("content-type", "text/plain")],
        Some(&order("beans-1kg", 1)),
    )
    .await
    .unwrap()
    .assert_problem(415, "unsupported-media-type");
    get(&format!("{base}/orders/0123456789abcdef0123456789abcdef"))
        .await
        .unwrap()
        .assert_problem(404, "order-not-found");
    get(&format!("{base}/nowhere"))
        .await
        .unwrap()
        .assert_problem(404, "not-found");
    request(Method::DELETE, &format!("{base}/orders"), &[], None)
        .await
        .unwrap()
        .assert_problem(405, "method-not-allowed");

    // The scarce SKU (stock 3): two orders of 2, at most one can be served.
    let mut scarce = Vec::new();
    for key in ["print-1", "print-2"] {
        let answer = post_order(&base, &order("limited-print", 2), Some(key))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
        scarce.push(answer.json()["order_id"].as_str().unwrap().to_owned());
    }

    // Every order reaches an end.
    let view = support::await_terminal(&base, &id, Duration::from_secs(60)).await;
    assert_eq!(view["order_id"], id.as_str());
    assert_eq!(view["customer"], "ada");
    assert_eq!(view["lines"][0]["sku"], "beans-1kg");
    let history = view["history"].as_array().unwrap();
    let placed = history
        .iter()
        .filter(|h| h["event"] == "OrderPlaced")
        .count();
    assert_eq!(placed, 1, "one OrderPlaced for the keyed order: {view}");
    let mut statuses = Vec::new();
    for scarce_id in &scarce {
        let view = support::await_terminal(&base, scarce_id, Duration::from_secs(60)).await;
        statuses.push(view["status"].as_str().unwrap().to_owned());
    }
    assert!(
        statuses.iter().any(|s| s == "cancelled"),
        "stock for one order of two: {statuses:?}"
    );

    // Every order the keyed requests made exists exactly once in PostgreSQL.
    let store = PgEventStore::connect(
        PgConfig::new(shop.database_url.clone())
            .with_schema(shop.namespace.clone())
            .with_max_connections(1)
            .with_migrations(MigrationMode::Verify),
    )
    .await
    .unwrap();
    for order_id in std::iter::once(&id).chain(raced.iter()) {
        let events = store
            .read_stream(&StreamId::of("order", order_id), 1, 100)
            .await
            .unwrap();
        let placed = events
            .iter()
            .filter(|e| &*e.event_type == "OrderPlaced")
            .count();
        assert_eq!(placed, 1, "order {order_id}");
    }
    store.close().await;

    // Metrics: the exposition parses, business counters moved, the HTTP histogram is there.
    // (The orders service counts a closed order just after the append a read can see.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let exposition = loop {
        let exposition = get(&format!("{base}/metrics")).await.unwrap();
        let samples = support::samples(&exposition.text());
        if sum(&samples, "shop_orders_terminal_total", "") >= 3.0 || Instant::now() > deadline {
            break exposition;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(exposition.status, StatusCode::OK);
    assert!(
        exposition
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        exposition.header("content-type")
    );
    let text = exposition.text();
    let samples = support::samples(&text);
    let orders = sum(&samples, "shop_orders_placed_total", "");
    assert_eq!(orders, 4.0, "beans (key-1), beans (key-2), two prints");
    assert!(
        sum(&samples, "shop_orders_terminal_total", "") >= 3.0,
        "{text}"
    );
    assert!(
        sum(
            &samples,
            "http_server_request_duration_seconds_count",
            "http_route=\"/orders\""
        ) > 0.0
    );
    assert!(
        samples
            .iter()
            .any(|(name, _, _)| name == "reprise_relay_published_total"),
        "the framework's own metrics are exported"
    );
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} is not described"
        );
    }
    if support::installed("promtool") {
        let path = shop.dir.join("metrics.txt");
        std::fs::write(&path, &text).unwrap();
        let output = Command::new("sh")
            .args([
                "-c",
                &format!("promtool check metrics < {}", path.display()),
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    } else {
        eprintln!(
            "promtool is not installed (apt-get install prometheus): exposition checked by the parser only"
        );
    }

    let mut shop = shop;
    drop(shop.service.take());
    shop.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_and_loses_no_accepted_order() {
    const GRACE_MS: u64 = 8_000;
    let mut shop = Shop::start(
        "term",
        ShopOptions {
            grace_ms: Some(GRACE_MS),
            ..ShopOptions::default()
        },
    )
    .await;
    let base = shop.url();
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (base, accepted, refused, stop) = (
            base.clone(),
            Arc::clone(&accepted),
            Arc::clone(&refused),
            Arc::clone(&stop),
        );
        clients.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(60)
            {
                n += 1;
                let key = format!("load-{client}-{n}");
                let sku = ["beans-1kg", "espresso-cup", "pour-over-kit"][n % 3];
                match post_order(&base, &order(sku, 1), Some(&key)).await {
                    Ok(answer) if answer.status == StatusCode::ACCEPTED => {
                        accepted
                            .lock()
                            .push(answer.json()["order_id"].as_str().unwrap().to_owned());
                    }
                    Ok(answer) => {
                        assert_eq!(
                            answer.status,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "only 202 or 503 under shutdown: {}",
                            answer.text()
                        );
                        refused.lock().push(answer.text());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // The listener is gone: the process is exiting.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    // Load for a while, then SIGTERM in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.lock().len() < 30 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before_term = accepted.lock().len();
    assert!(before_term > 0, "no order accepted under load");
    let terminated = Instant::now();
    shop.service().terminate();
    let status = shop
        .service_mut()
        .wait_exit(Duration::from_millis(GRACE_MS + 2_000));
    let took = terminated.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let log = shop.service().log_text();
    let status =
        status.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM; log:\n{log}"));
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(
        took < Duration::from_millis(GRACE_MS),
        "exited after {took:?}, past the {GRACE_MS} ms grace"
    );
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("shut down"), "{log}");
    for problem in refused.lock().iter() {
        assert!(problem.contains("shutting-down"), "{problem}");
    }

    // Every order that got a 202 is in PostgreSQL.
    let accepted = accepted.lock().clone();
    eprintln!(
        "{} orders accepted ({before_term} before SIGTERM), {} refused while draining; exit after {took:?}",
        accepted.len(),
        refused.lock().len()
    );
    let store = PgEventStore::connect(
        PgConfig::new(shop.database_url.clone())
            .with_schema(shop.namespace.clone())
            .with_max_connections(2)
            .with_migrations(MigrationMode::Verify),
    )
    .await
    .unwrap();
    for id in &accepted {
        let events = store
            .read_stream(&StreamId::of("order", id), 1, 100)
            .await
            .unwrap();
        assert!(
            events.iter().any(|e| &*e.event_type == "OrderPlaced"),
            "accepted order {id} is not in the store"
        );
    }
    store.close().await;

    // A restarted service takes over what was in flight: every accepted order ends.
    shop.start_service("service-restarted", None).await;
    let base = shop.url();
    for id in &accepted {
        support::await_terminal(&base, id, Duration::from_secs(90)).await;
    }
    drop(shop.service.take());
    shop.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_payment_provider_meets_retries_the_breaker_and_compensation() {
    // Every charge and refund fails: the scenario's retry policy tries each call four
    // times, the breaker opens, the commands are parked as dead letters, the saga's
    // payment deadline compensates — and while the breaker is open the service refuses
    // new orders and reports it in readiness.
    let shop = Shop::start(
        "fail",
        ShopOptions {
            provider_args: vec!["--error-rate".into(), "1".into()],
            ..ShopOptions::default()
        },
    )
    .await;
    let base = shop.url();
    let mut ids = Vec::new();
    for n in 0..3 {
        let answer = post_order(&base, &order("espresso-cup", 1), Some(&format!("fail-{n}")))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
        ids.push(answer.json()["order_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let view = support::await_terminal(&base, id, Duration::from_secs(60)).await;
        assert_eq!(view["status"], "cancelled", "{view}");
    }
    // The breaker: seen open by readiness, and a new order refused meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut unready, mut refused) = (false, false);
    let mut n = 0;
    while !(unready && refused) {
        assert!(
            Instant::now() < deadline,
            "the breaker was never seen open (unready: {unready}, refused: {refused})"
        );
        let ready = get(&format!("{base}/health/ready")).await.unwrap();
        if ready.status == StatusCode::SERVICE_UNAVAILABLE
            && ready.json()["checks"]["breakers"]["status"] == "fail"
        {
            unready = true;
        }
        n += 1;
        let answer = post_order(
            &base,
            &order("espresso-cup", 1),
            Some(&format!("probe-{n}")),
        )
        .await
        .unwrap();
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            answer.assert_problem(503, "dependency-unavailable");
            assert!(answer.header("retry-after").is_some());
            refused = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = get(&format!("{base}/metrics")).await.unwrap().text();
    let samples = support::samples(&text);
    let dependency = "dependency=\"payment-provider\"";
    assert!(
        sum(&samples, "reprise_retries_total", dependency) > 0.0,
        "{text}"
    );
    assert!(
        sum(
            &samples,
            "reprise_dependency_calls_failed_total",
            dependency
        ) > 0.0,
        "{text}"
    );
    assert!(sum(&samples, "reprise_breaker_transitions_total", dependency) > 0.0);
    assert!(
        sum(&samples, "reprise_dead_letters_total", "") > 0.0,
        "{text}"
    );
    assert!(
        sum(
            &samples,
            "shop_orders_terminal_total",
            "status=\"cancelled\""
        ) >= 3.0,
        "{text}"
    );
    let mut shop = shop;
    drop(shop.service.take());
    shop.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_service() {
    if !(support::installed("prometheus") && support::installed("promtool")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus and promtool must be installed in CI (apt-get install prometheus)"
        );
        eprintln!("SKIPPED: prometheus is not installed (apt-get install prometheus)");
        return;
    }
    let shop = Shop::start("prom", ShopOptions::default()).await;
    let base = shop.url();
    let answer = post_order(&base, &order("espresso-cup", 1), Some("prom-1"))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());

    let target = base.trim_start_matches("http://").to_owned();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = shop.dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: reprise-shop\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let data = shop.dir.join("prometheus-data");
    let log = std::fs::File::create(shop.dir.join("prometheus.log")).unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let query = |expr: &'static str| {
        let url = format!(
            "http://127.0.0.1:{port}/api/v1/query?query={}",
            expr.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace(' ', "%20")
                .replace('>', "%3E")
        );
        async move { get(&url).await }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut up, mut placed) = (false, false);
    while !(up && placed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(answer) = query("up{job=\"reprise-shop\"} == 1").await
            && answer.status == StatusCode::OK
        {
            up = answer.json()["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
        }
        if let Ok(answer) = query("shop_orders_placed_total > 0").await
            && answer.status == StatusCode::OK
        {
            placed = answer.json()["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
        }
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let prometheus_log =
        std::fs::read_to_string(shop.dir.join("prometheus.log")).unwrap_or_default();
    assert!(
        up,
        "Prometheus never saw the target up; its log:\n{prometheus_log}"
    );
    assert!(placed, "Prometheus never saw shop_orders_placed_total > 0");
    let mut shop = shop;
    drop(shop.service.take());
    shop.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_and_unreachable_services_are_named() {
    let (database_url, kafka) = support::services();
    // Every problem, one line each, exit 2, before anything is connected.
    let (status, _, err) = run(
        &[
            "serve",
            "--listen",
            "everywhere",
            "--payment-url",
            "ftp://provider",
            "--carrier-url",
            "localhost:8082",
            "--schema",
            "Not-A-Schema",
            "--kafka-bootstrap",
            "broker-without-port",
        ],
        &[("DATABASE_URL", "mysql://nope".to_owned())],
    );
    assert_eq!(status.code(), Some(2), "{err}");
    for needle in [
        "--listen",
        "--payment-url",
        "--carrier-url",
        "--schema",
        "--database-url",
        "--kafka-bootstrap",
    ] {
        assert_eq!(
            err.lines().filter(|l| l.contains(needle)).count(),
            1,
            "one line for {needle}:\n{err}"
        );
    }

    // An unreachable database: the message names its address.
    let (status, _, err) = run(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            (
                "DATABASE_URL",
                "postgres://shop:secret@127.0.0.1:1/shopdb".to_owned(),
            ),
            ("KAFKA_BOOTSTRAP", kafka.clone()),
        ],
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("secret"), "the password leaked: {err}");

    // A schema that was never migrated: `migrate --check` says so, `serve` refuses.
    let schema = support::namespace("cfg");
    let db = [("DATABASE_URL", database_url.clone())];
    let (status, _, err) = run(&["migrate", "--check", "--schema", &schema], &db);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("reprise-shop migrate"), "{err}");
    let (status, out, err) = run(&["migrate", "--schema", &schema], &db);
    assert!(status.success(), "{out}{err}");
    let (status, out, err) = run(&["migrate", "--check", "--schema", &schema], &db);
    assert!(status.success(), "{out}{err}");

    // An unreachable broker: the message names the bootstrap servers.
    let (status, _, err) = run(
        &["serve", "--listen", "127.0.0.1:0", "--schema", &schema],
        &[
            ("DATABASE_URL", database_url.clone()),
            ("KAFKA_BOOTSTRAP", "127.0.0.1:1".to_owned()),
        ],
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url)
        .await
        .unwrap();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_providers_serve_the_models_and_misbehave_on_request() {
    let dir = support::scratch(&support::namespace("fake"));
    let provider = support::Proc::spawn(
        &dir,
        "payment",
        &[
            "payment-provider",
            "--listen",
            "127.0.0.1:0",
            "--latency-ms",
            "2",
        ],
        &[],
        Duration::from_secs(20),
    );
    let charge = r#"{"idempotency_key":"o1","order":"o1","amount":900,"card":3}"#;
    let post = |url: String, body: &'static str| async move {
        request(
            Method::POST,
            &url,
            &[("content-type", "application/json")],
            Some(body),
        )
        .await
        .unwrap()
    };
    let first = post(format!("{}/charges", provider.url), charge).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(
        first.json(),
        serde_json::json!({"Captured": {"charge": "o1"}})
    );
    let again = post(format!("{}/charges", provider.url), charge).await;
    assert_eq!(again.json(), first.json(), "idempotent by key");
    let refund = post(
        format!("{}/refunds", provider.url),
        r#"{"idempotency_key":"o1"}"#,
    )
    .await;
    assert_eq!(
        refund.json(),
        serde_json::json!({"Refunded": {"amount": 900}})
    );
    let books = get(&format!("{}/books", provider.url))
        .await
        .unwrap()
        .json();
    assert_eq!(books["charges"], 1);
    assert_eq!(books["refunded"], 1);

    let failing = support::Proc::spawn(
        &dir,
        "failing",
        &["payment-provider", "--listen", "127.0.0.1:0"],
        &[("SHOP_ERROR_RATE", "1".to_owned())],
        Duration::from_secs(20),
    );
    post(format!("{}/charges", failing.url), charge)
        .await
        .assert_problem(500, "injected-error");

    let carrier = support::Proc::spawn(
        &dir,
        "carrier",
        &["carrier", "--listen", "127.0.0.1:0", "--outage", "0s..1h"],
        &[],
        Duration::from_secs(20),
    );
    let down = post(format!("{}/shipments", carrier.url), r#"{"order":"o1"}"#).await;
    down.assert_problem(503, "outage");
    assert!(down.header("retry-after").is_some());

    let carrier = support::Proc::spawn(
        &dir,
        "carrier-up",
        &["carrier", "--listen", "127.0.0.1:0"],
        &[],
        Duration::from_secs(20),
    );
    let registered = post(format!("{}/shipments", carrier.url), r#"{"order":"o1"}"#).await;
    assert_eq!(registered.json()["tracking"], "TRK-o1");
    let tracked = get(&format!("{}/shipments/o1", carrier.url)).await.unwrap();
    assert_eq!(tracked.json(), serde_json::json!("Registered"));
    get(&format!("{}/shipments/unknown", carrier.url))
        .await
        .unwrap()
        .assert_problem(404, "unknown-shipment");

    // Invalid flags: every problem named, exit 2.
    let (status, _, err) = run(
        &[
            "carrier",
            "--listen",
            "nowhere",
            "--lost-per-mille",
            "2000",
            "--outage",
            "later",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("  - ")).count(),
        3,
        "{err}"
    );

    // SIGTERM stops a provider cleanly.
    let mut provider = provider;
    provider.terminate();
    let status = provider.wait_exit(Duration::from_secs(5)).expect("exited");
    assert!(status.success(), "{status}");
}
