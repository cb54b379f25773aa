//! `deploy/grafana`: the dashboard's panels read only metrics the service exports and
//! cover what the brief asks for; provisioning points at the compose services and mounts.

use std::collections::BTreeSet;

use reprise_deploy_check::contract;
use reprise_deploy_check::{files, promql, tools};
use serde_json::Value;

const DASHBOARD: &str = "deploy/grafana/dashboards/reprise-shop.json";
const DATASOURCES: &str = "deploy/grafana/provisioning/datasources/datasources.yml";
const PROVIDERS: &str = "deploy/grafana/provisioning/dashboards/dashboards.yml";

/// Every non-row panel, nested rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a [Value], out: &mut Vec<&'a Value>) {
        for panel in list {
            if panel["type"] == "row" {
                walk(panel["panels"].as_array().map_or(&[], Vec::as_slice), out);
            } else {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        dashboard["panels"].as_array().expect("panels is a list"),
        &mut out,
    );
    out
}

/// (panel title, expression) of every query.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "panel {title:?} has no query");
            targets.into_iter().map(move |t| {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"))
                    .to_owned();
                (title.clone(), expr)
            })
        })
        .collect()
}

#[test]
fn every_panel_reads_only_metrics_and_labels_the_service_exports() {
    let catalogue = contract::catalogue();
    let dashboard = files::json(DASHBOARD);
    for (title, expr) in queries(&dashboard) {
        let reads = promql::reads(&expr).unwrap_or_else(|e| panic!("{title}: {e}"));
        assert!(!reads.selectors.is_empty(), "{title}: selects no metric");
        let mut available = BTreeSet::new();
        for selector in &reads.selectors {
            let labels = catalogue.labels(&selector.metric).unwrap_or_else(|| {
                panic!(
                    "panel {title:?}: metric {:?} is not exported by the service (checked against {})",
                    selector.metric, catalogue.source
                )
            });
            for label in &selector.matcher_labels {
                assert!(
                    labels.contains(label),
                    "panel {title:?}: {} has no label {label:?}",
                    selector.metric
                );
            }
            available.extend(labels.iter().cloned());
        }
        for label in &reads.grouping_labels {
            assert!(
                available.contains(label),
                "panel {title:?}: groups on {label:?}, which none of its metrics has"
            );
        }
    }
}

#[test]
fn the_dashboard_covers_requests_orders_relay_lag_breakers_dead_letters_retries_deadlines() {
    let dashboard = files::json(DASHBOARD);
    let used: BTreeSet<String> = queries(&dashboard)
        .iter()
        .flat_map(|(_, expr)| {
            promql::reads(expr)
                .expect("lexes")
                .metrics()
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    for (what, metric) in [
        ("request rate", "http_server_request_duration_seconds_count"),
        (
            "latency percentiles",
            "http_server_request_duration_seconds_bucket",
        ),
        ("orders placed", "shop_orders_placed_total"),
        ("orders terminal", "shop_orders_terminal_total"),
        ("relay lag", "reprise_relay_position"),
        ("relay lag", "reprise_relay_published_total"),
        ("relay lag", "reprise_pg_events_appended_total"),
        ("consumer lag", "reprise_bus_consumer_lag"),
        ("breaker state", "reprise_breaker_state"),
        ("dead letters", "reprise_dead_letters_pending"),
        ("retries", "reprise_retries_total"),
        ("saga deadlines", "reprise_saga_deadlines_fired_total"),
    ] {
        assert!(used.contains(metric), "no panel shows {what} ({metric})");
    }
    let text = files::read(DASHBOARD);
    for quantile in ["0.5", "0.95", "0.99"] {
        assert!(
            text.contains(&format!("histogram_quantile({quantile},")),
            "latency p{quantile}"
        );
    }
}

#[test]
fn panels_have_unique_ids_fit_the_grid_and_use_the_datasource_variable() {
    let dashboard = files::json(DASHBOARD);
    assert_eq!(dashboard["uid"], "reprise-shop");
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let id = panel["id"].as_i64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
        let grid = &panel["gridPos"];
        let (x, w) = (
            grid["x"].as_i64().expect("x"),
            grid["w"].as_i64().expect("w"),
        );
        assert!(
            x >= 0 && w > 0 && x + w <= 24,
            "panel {id} outside the grid"
        );
    }
    let variable = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(variable["query"], "prometheus");
    let name = variable["name"].as_str().expect("name");
    for panel in panels(&dashboard) {
        assert_eq!(
            panel["datasource"]["uid"],
            format!("${{{name}}}"),
            "panel {} uses the datasource variable",
            panel["title"]
        );
    }
}

#[test]
fn provisioning_points_at_the_compose_prometheus_and_dashboard_mount() {
    let datasources = files::yaml_one(DATASOURCES);
    let prometheus = datasources["datasources"]
        .as_vec()
        .expect("datasources")
        .iter()
        .find(|d| d["type"].as_str() == Some("prometheus"))
        .expect("a Prometheus data source");
    assert_eq!(prometheus["url"].as_str(), Some("http://prometheus:9090"));
    assert_eq!(prometheus["uid"].as_str(), Some("prometheus"));

    let compose = files::yaml_one("docker-compose.yml");
    let grafana = &compose["services"]["grafana"];
    let volumes = files::strings(&grafana["volumes"]);
    let providers = files::yaml_one(PROVIDERS);
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    assert!(
        volumes.contains(&format!("./deploy/grafana/dashboards:{path}:ro").as_str()),
        "compose mounts deploy/grafana/dashboards at the provider's path {path}: {volumes:?}"
    );
    assert!(volumes.contains(&"./deploy/grafana/provisioning:/etc/grafana/provisioning:ro"));
    assert!(
        files::strings(&compose["services"]["prometheus"]["ports"])
            .iter()
            .any(|p| p.ends_with(":9090")),
        "compose's prometheus listens on 9090"
    );
}

/// Wraps every panel query in a recording rule (Grafana's `$__rate_interval` as 5m) and
/// lets promtool parse them: a syntax error in a panel shows here, not on a dashboard.
#[test]
fn promtool_parses_every_panel_query() {
    let Some(promtool) = tools::promtool() else {
        tools::note_without_promtool("the dashboard's queries");
        return;
    };
    let dashboard = files::json(DASHBOARD);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries(&dashboard).iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "5m");
        let quoted = serde_json::to_string(&expr).expect("a JSON string is a YAML string");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("reprise-deploy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("dashboard-queries.yml");
    std::fs::write(&path, rules).expect("write rules");
    let out = tools::run_promtool(
        &promtool,
        &["check", "rules", path.to_str().expect("UTF-8 path")],
    );
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.contains("SUCCESS"), "{out}");
}
