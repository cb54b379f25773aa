//! `deploy/prometheus`: the alert rules cover what operators need, read only metrics the
//! service exports, point at a runbook section that exists, and pass promtool (syntax,
//! config and the rules' unit tests) when it is installed.

use std::collections::BTreeSet;

use reprise_deploy_check::contract::{self, Catalogue};
use reprise_deploy_check::{files, promql, tools};
use yaml_rust2::Yaml;

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts.test.yml";
const CONFIG: &str = "deploy/prometheus/prometheus.yml";
const RUNBOOK: &str = "docs/deployment.md";

fn rules() -> Vec<Yaml> {
    let doc = files::yaml_one(ALERTS);
    let groups = doc["groups"].as_vec().expect("groups is a list");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_vec().expect("rules is a list").clone())
        .collect()
}

/// The catalogue plus the series the recording rules create (labels: those they keep).
fn catalogue_with_recorded() -> Catalogue {
    let mut catalogue = contract::catalogue();
    for rule in rules() {
        if let Some(record) = rule["record"].as_str() {
            let expr = rule["expr"].as_str().expect("expr");
            let reads = promql::reads(expr).unwrap_or_else(|e| panic!("{record}: {e}"));
            catalogue.add(record, reads.grouping_labels.iter().map(String::as_str));
        }
    }
    catalogue
}

/// Checks the metric and label names `expr` reads against the catalogue; returns the
/// labels available to its templates.
fn check_expr(catalogue: &Catalogue, what: &str, expr: &str) -> BTreeSet<String> {
    let reads = promql::reads(expr).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(!reads.selectors.is_empty(), "{what}: selects no metric");
    let mut available: BTreeSet<String> = BTreeSet::new();
    for selector in &reads.selectors {
        let labels = catalogue.labels(&selector.metric).unwrap_or_else(|| {
            panic!(
                "{what}: metric {:?} is not exported by the service (checked against {})",
                selector.metric, catalogue.source
            )
        });
        for label in &selector.matcher_labels {
            assert!(
                labels.contains(label),
                "{what}: {} has no label {label:?} (it has {labels:?})",
                selector.metric
            );
        }
        available.extend(labels.iter().cloned());
    }
    for label in &reads.grouping_labels {
        assert!(
            available.contains(label),
            "{what}: groups or matches on {label:?}, which none of its metrics has ({available:?})"
        );
    }
    available
}

#[test]
fn alerts_read_only_metrics_and_labels_the_service_exports() {
    let catalogue = catalogue_with_recorded();
    for rule in rules() {
        let name = rule["alert"]
            .as_str()
            .or_else(|| rule["record"].as_str())
            .expect("every rule is an alert or a recording rule");
        let expr = rule["expr"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no expr"));
        let available = check_expr(&catalogue, name, expr);
        // Templates may only use labels the expression can carry.
        let annotations = &rule["annotations"];
        for key in files::keys(annotations) {
            let text = annotations[key].as_str().unwrap_or_default();
            for part in text.split("$labels.").skip(1) {
                let label: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    available.contains(&label),
                    "{name}: annotation {key} uses $labels.{label}, which its expression does not carry"
                );
            }
        }
    }
}

#[test]
fn the_alerts_operators_need_exist_with_severity_text_and_runbook() {
    let runbook = files::read(RUNBOOK);
    let anchors = files::markdown_anchors(&runbook);
    let mut names = Vec::new();
    for rule in rules() {
        let Some(name) = rule["alert"].as_str() else {
            continue;
        };
        names.push(name.to_owned());
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{name}: severity is warning or critical, not {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "{name}: annotation {key} missing"
            );
        }
        let runbook_url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
        let (file, anchor) = runbook_url
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: runbook_url {runbook_url} has no #section"));
        assert_eq!(file, RUNBOOK, "{name}: runbook in {RUNBOOK}");
        assert!(
            anchors.iter().any(|a| a == anchor),
            "{name}: {RUNBOOK} has no section #{anchor}"
        );
        assert!(
            rule["for"].as_str().is_some(),
            "{name}: a `for` duration keeps one bad scrape from paging"
        );
    }
    for required in [
        "RepriseDeadLettersPending",
        "RepriseBreakerOpen",
        "RepriseConsumerLagHigh",
        "RepriseConsumerLagGrowing",
        "RepriseSagasStuckPastDeadline",
        "RepriseHttp5xxRateHigh",
    ] {
        assert!(names.iter().any(|n| n == required), "no alert {required}");
    }
    let pending = rules()
        .into_iter()
        .find(|r| r["alert"].as_str() == Some("RepriseDeadLettersPending"))
        .expect("dead-letter alert");
    assert_eq!(
        pending["for"].as_str(),
        Some("5m"),
        "dead letters pending for 5m"
    );
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "alert names are unique");
}

#[test]
fn every_alert_has_a_unit_test() {
    let tests = files::read(ALERT_TESTS);
    for rule in rules() {
        if let Some(name) = rule["alert"].as_str() {
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "{ALERT_TESTS} has no test for {name}"
            );
        }
    }
}

#[test]
fn the_scrape_config_targets_the_service_port_and_loads_the_rules() {
    let config = files::yaml_one(CONFIG);
    for rule_file in files::strings(&config["rule_files"]) {
        assert!(
            files::root()
                .join("deploy/prometheus")
                .join(rule_file)
                .is_file(),
            "{CONFIG}: rule file {rule_file} missing"
        );
    }
    assert!(files::strings(&config["rule_files"]).contains(&"alerts.yml"));
    let jobs = config["scrape_configs"].as_vec().expect("scrape_configs");
    let shop = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("reprise-shop"))
        .expect("a reprise-shop job (the alerts' up{job=\"reprise-shop\"})");
    assert_eq!(shop["metrics_path"].as_str(), Some(contract::METRICS_PATH));
    let targets: Vec<&str> = shop["static_configs"]
        .as_vec()
        .expect("static_configs")
        .iter()
        .flat_map(|c| files::strings(&c["targets"]))
        .collect();
    // The compose service that runs `serve`, on the service port (compose.rs checks the
    // service's name and command).
    assert_eq!(targets, [format!("shop:{}", contract::SERVICE_PORT)]);
}

#[test]
fn promtool_accepts_the_config_the_rules_and_the_rule_tests() {
    let Some(promtool) = tools::promtool() else {
        tools::note_without_promtool("prometheus.yml, alerts.yml and alerts.test.yml");
        return;
    };
    let out = tools::run_promtool(&promtool, &["check", "rules", ALERTS]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = tools::run_promtool(&promtool, &["check", "config", CONFIG]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = tools::run_promtool(&promtool, &["test", "rules", ALERT_TESTS]);
    assert!(out.contains("SUCCESS"), "{out}");
    println!("promtool: check rules, check config and test rules passed");
}
