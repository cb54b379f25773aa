//! The root `docker-compose.yml` is documentation users run: parse it and check that it
//! still offers what `docs/event-bus.md` promises (PostgreSQL matching
//! `scripts/postgres.sh`, three Redpanda brokers whose advertised Kafka listeners are
//! published on loopback).

use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docker-compose.yml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

fn strings(node: &Yaml) -> Vec<&str> {
    node.as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn postgres_matches_the_local_script() {
    let doc = compose();
    let pg = &doc["services"]["postgres"];
    assert!(
        pg["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("postgres:15")),
        "PostgreSQL 15, like DESIGN §8"
    );
    let env = &pg["environment"];
    assert_eq!(env["POSTGRES_USER"].as_str(), Some("reprise"));
    assert_eq!(env["POSTGRES_PASSWORD"].as_str(), Some("reprise-test-only"));
    assert_eq!(env["POSTGRES_DB"].as_str(), Some("reprise_test"));
    assert_eq!(strings(&pg["ports"]), vec!["127.0.0.1:5432:5432"]);
}

#[test]
fn three_redpanda_brokers_advertise_published_loopback_ports() {
    let doc = compose();
    let services = doc["services"].as_hash().expect("services is a map");
    let brokers: Vec<&str> = services
        .keys()
        .filter_map(Yaml::as_str)
        .filter(|n| n.starts_with("redpanda"))
        .collect();
    assert_eq!(brokers, vec!["redpanda-0", "redpanda-1", "redpanda-2"]);
    let mut external_ports = Vec::new();
    for name in brokers {
        let service = &doc["services"][name];
        assert!(
            service["image"]
                .as_str()
                .is_some_and(|i| i.contains("redpandadata/redpanda:v")),
            "{name}: pinned Redpanda image"
        );
        let command = strings(&service["command"]);
        let advertise = command
            .iter()
            .find_map(|a| a.strip_prefix("--advertise-kafka-addr="))
            .unwrap_or_else(|| panic!("{name}: no --advertise-kafka-addr"));
        let external = advertise
            .split(',')
            .find_map(|l| l.strip_prefix("external://127.0.0.1:"))
            .unwrap_or_else(|| panic!("{name}: no loopback external listener in {advertise}"));
        let published = format!("127.0.0.1:{external}:{external}");
        assert!(
            strings(&service["ports"]).contains(&published.as_str()),
            "{name}: advertised port {external} is not published as {published}"
        );
        if name != "redpanda-0" {
            assert!(
                command.contains(&"--seeds=redpanda-0:33145"),
                "{name} joins the cluster through redpanda-0"
            );
        }
        external_ports.push(external.to_owned());
    }
    external_ports.sort();
    external_ports.dedup();
    assert_eq!(
        external_ports.len(),
        3,
        "each broker has its own external port"
    );
}
