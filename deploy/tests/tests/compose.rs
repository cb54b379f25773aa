//! `docker-compose.yml`: the full local stack — the service, its migration, the fake
//! providers, Jaeger, Prometheus and Grafana besides PostgreSQL and Redpanda (whose
//! details `adapters/kafka/tests/docker_compose.rs` checks) — with the contract's ports,
//! published on loopback only.

use std::collections::BTreeMap;

use reprise_deploy_check::{contract, files};
use yaml_rust2::Yaml;

fn compose() -> Yaml {
    files::yaml_one("docker-compose.yml")
}

fn environment(service: &Yaml) -> BTreeMap<String, String> {
    service["environment"]
        .as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| {
                    let value = match v {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(n) => n.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        _ => return None,
                    };
                    Some((k.as_str()?.to_owned(), value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The new services come with the profile `shop`, so a plain `docker compose up -d` still
/// starts only PostgreSQL and Redpanda, as docs/event-bus.md says.
#[test]
fn the_stack_is_behind_the_shop_profile_and_the_infrastructure_is_not() {
    let doc = compose();
    for name in files::keys(&doc["services"]) {
        let profiles = files::strings(&doc["services"][name]["profiles"]);
        if name == "postgres" || name.starts_with("redpanda-") {
            assert!(profiles.is_empty(), "{name} starts without a profile");
        } else {
            assert_eq!(profiles, ["shop"], "{name} belongs to the profile shop");
        }
    }
}

#[test]
fn every_service_of_the_stack_is_there() {
    let doc = compose();
    let names = files::keys(&doc["services"]);
    for expected in [
        "postgres",
        "redpanda-0",
        "redpanda-1",
        "redpanda-2",
        "migrate",
        "shop",
        "payment-provider",
        "carrier",
        "jaeger",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(&expected), "no service {expected}");
    }
}

#[test]
fn the_service_s_roles_run_their_subcommand_on_their_port() {
    let doc = compose();
    for (name, subcommand, port) in [
        ("migrate", "migrate", None),
        ("shop", "serve", Some(contract::SERVICE_PORT)),
        (
            "payment-provider",
            "payment-provider",
            Some(contract::PAYMENT_PROVIDER_PORT),
        ),
        ("carrier", "carrier", Some(contract::CARRIER_PORT)),
    ] {
        let service = &doc["services"][name];
        assert_eq!(
            files::strings(&service["command"]),
            [subcommand],
            "{name} runs `{} {subcommand}`",
            contract::BINARY
        );
        assert_eq!(
            service["build"]["context"].as_str(),
            Some("."),
            "{name}: built from the root Dockerfile"
        );
        assert_eq!(service["build"]["dockerfile"].as_str(), Some("Dockerfile"));
        let env = environment(service);
        for key in env.keys() {
            assert!(
                contract::is_known_env(key),
                "{name}: {key} is not a variable of the service"
            );
        }
        match port {
            Some(port) => {
                assert_eq!(
                    files::strings(&service["ports"]),
                    [format!("127.0.0.1:{port}:{port}")],
                    "{name} publishes {port} on loopback"
                );
                assert_eq!(
                    env.get("SHOP_LISTEN").map(String::as_str),
                    Some(format!("0.0.0.0:{port}").as_str()),
                    "{name} listens on all interfaces of its container, on {port}"
                );
            }
            None => assert!(service["ports"].is_badvalue(), "{name} publishes nothing"),
        }
    }
}

#[test]
fn the_service_finds_its_dependencies_and_waits_for_the_migration() {
    let doc = compose();
    let shop = &doc["services"]["shop"];
    let env = environment(shop);
    for required in contract::REQUIRED_SERVE_ENV {
        assert!(env.contains_key(*required), "shop: {required} is set");
    }
    assert_eq!(
        env["SHOP_PAYMENT_URL"],
        format!(
            "http://payment-provider:{}",
            contract::PAYMENT_PROVIDER_PORT
        )
    );
    assert_eq!(
        env["SHOP_CARRIER_URL"],
        format!("http://carrier:{}", contract::CARRIER_PORT)
    );
    assert_eq!(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://jaeger:4318");
    // The database of the postgres service, reached by its service name.
    let pg = environment(&doc["services"]["postgres"]);
    let url = format!(
        "postgres://{}:{}@postgres:5432/{}",
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]
    );
    assert_eq!(env["DATABASE_URL"], url);
    assert_eq!(
        environment(&doc["services"]["migrate"])["DATABASE_URL"],
        url
    );
    // The brokers' internal listeners.
    for broker in env["KAFKA_BOOTSTRAP"].split(',') {
        let (host, port) = broker.split_once(':').expect("host:port");
        let command = files::strings(&doc["services"][host]["command"]);
        assert!(
            command
                .iter()
                .any(|a| a.contains(&format!("internal://{host}:{port}"))),
            "{broker} is an advertised internal listener"
        );
    }
    let depends = &shop["depends_on"];
    assert_eq!(
        depends["migrate"]["condition"].as_str(),
        Some("service_completed_successfully"),
        "shop starts after the migration succeeded"
    );
    assert_eq!(
        depends["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    for other in ["payment-provider", "carrier", "redpanda-0"] {
        assert!(!depends[other].is_badvalue(), "shop depends on {other}");
    }
    assert_eq!(
        doc["services"]["migrate"]["restart"].as_str(),
        Some("no"),
        "migrate is one-shot"
    );
    // Docker's SIGKILL must not cut the graceful shutdown short.
    let grace_ms = env
        .get("SHOP_SHUTDOWN_GRACE_MS")
        .map_or(contract::DEFAULT_SHUTDOWN_GRACE_MS, |v| {
            v.parse().expect("SHOP_SHUTDOWN_GRACE_MS is a number")
        });
    let stop = shop["stop_grace_period"]
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse::<i64>().ok())
        .expect("shop: stop_grace_period in seconds (Docker's default 10 s is too short)");
    assert!(
        stop * 1000 > grace_ms,
        "stop_grace_period {stop} s <= the service's shutdown grace {grace_ms} ms"
    );
}

#[test]
fn observability_services_publish_their_ports_and_mount_deploy() {
    let doc = compose();
    let jaeger = &doc["services"]["jaeger"];
    assert!(
        jaeger["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("jaegertracing/all-in-one:")),
        "Jaeger all-in-one, pinned"
    );
    let ports = files::strings(&jaeger["ports"]);
    for port in [16686, 4317, 4318] {
        assert!(
            ports.contains(&format!("127.0.0.1:{port}:{port}").as_str()),
            "jaeger publishes {port}: {ports:?}"
        );
    }
    let prometheus = &doc["services"]["prometheus"];
    assert_eq!(
        files::strings(&prometheus["ports"]),
        ["127.0.0.1:9090:9090"]
    );
    assert!(
        files::strings(&prometheus["volumes"]).contains(&"./deploy/prometheus:/etc/prometheus:ro")
    );
    assert!(
        files::strings(&prometheus["command"])
            .contains(&"--config.file=/etc/prometheus/prometheus.yml")
    );
    assert_eq!(
        files::strings(&doc["services"]["grafana"]["ports"]),
        ["127.0.0.1:3000:3000"]
    );
}

#[test]
fn every_published_port_is_on_loopback_and_every_image_pinned() {
    let doc = compose();
    for name in files::keys(&doc["services"]) {
        let service = &doc["services"][name];
        for port in files::strings(&service["ports"]) {
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name}: {port} is published beyond loopback"
            );
        }
        for volume in files::strings(&service["volumes"]) {
            if let Some(source) = volume.strip_prefix("./") {
                let source = source.split(':').next().unwrap_or_default();
                assert!(
                    files::root().join(source).exists(),
                    "{name}: mounts {source}, which does not exist"
                );
            }
        }
        let image = service["image"].as_str().unwrap_or_default();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{name}: image {image:?} has a pinned tag"
        );
    }
}
