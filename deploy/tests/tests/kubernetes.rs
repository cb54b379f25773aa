//! `deploy/k8s`: the kustomization lists every manifest; probes use the service's health
//! paths on a port the container declares; Services, the HPA and the PDB select what
//! exists; the shutdown budget exceeds the service's grace; config keys are the contract's.

use std::collections::{BTreeMap, BTreeSet};

use reprise_deploy_check::{contract, files};
use yaml_rust2::Yaml;

const DIR: &str = "deploy/k8s";

/// (file, document) of every resource the kustomization lists.
fn resources() -> Vec<(String, Yaml)> {
    let kustomization = files::yaml_one(&format!("{DIR}/kustomization.yaml"));
    files::strings(&kustomization["resources"])
        .into_iter()
        .flat_map(|file| {
            let rel = format!("{DIR}/{file}");
            files::yaml(&rel)
                .into_iter()
                .map(move |doc| (rel.clone(), doc))
        })
        .collect()
}

fn of_kind<'a>(resources: &'a [(String, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    resources
        .iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect()
}

fn named<'a>(resources: &'a [(String, Yaml)], kind: &str, name: &str) -> &'a Yaml {
    of_kind(resources, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn string_map(node: &Yaml) -> BTreeMap<String, String> {
    node.as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Pod templates of Deployments and Jobs: (workload name, pod spec, pod labels).
fn pod_templates(resources: &[(String, Yaml)]) -> Vec<(String, &Yaml, BTreeMap<String, String>)> {
    resources
        .iter()
        .filter(|(_, d)| matches!(d["kind"].as_str(), Some("Deployment" | "Job")))
        .map(|(_, d)| {
            let name = d["metadata"]["name"].as_str().expect("name").to_owned();
            let template = &d["spec"]["template"];
            (
                name,
                &template["spec"],
                string_map(&template["metadata"]["labels"]),
            )
        })
        .collect()
}

fn containers(pod: &Yaml) -> Vec<&Yaml> {
    let mut all: Vec<&Yaml> = pod["containers"]
        .as_vec()
        .expect("containers")
        .iter()
        .collect();
    if let Some(init) = pod["initContainers"].as_vec() {
        all.extend(init);
    }
    all
}

/// Whether `port` (a number or a name) is one of the container's ports.
fn declares_port(container: &Yaml, port: &Yaml) -> bool {
    container["ports"].as_vec().is_some_and(|ports| {
        ports.iter().any(|p| match port {
            Yaml::Integer(n) => p["containerPort"].as_i64() == Some(*n),
            Yaml::String(name) => p["name"].as_str() == Some(name.as_str()),
            _ => false,
        })
    })
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn the_kustomization_lists_every_manifest_and_only_existing_ones() {
    let kustomization = files::yaml_one(&format!("{DIR}/kustomization.yaml"));
    let listed: BTreeSet<String> = files::strings(&kustomization["resources"])
        .into_iter()
        .map(|f| format!("{DIR}/{f}"))
        .collect();
    let on_disk: BTreeSet<String> = files::under(DIR)
        .into_iter()
        .filter(|f| {
            // monitoring/ needs the Prometheus Operator's CRDs: applied on its own.
            !f.ends_with("/kustomization.yaml") && !f.starts_with(&format!("{DIR}/monitoring/"))
        })
        .collect();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources vs files in {DIR}"
    );
    assert_eq!(kustomization["namespace"].as_str(), Some("reprise"));
    let images = kustomization["images"].as_vec().expect("images");
    assert!(
        images
            .iter()
            .any(|i| i["name"].as_str() == Some(contract::BINARY)),
        "kustomization sets the {} image",
        contract::BINARY
    );
    for (file, doc) in resources() {
        assert!(doc["apiVersion"].as_str().is_some(), "{file}: apiVersion");
        assert!(doc["kind"].as_str().is_some(), "{file}: kind");
        assert!(doc["metadata"]["name"].as_str().is_some(), "{file}: name");
    }
}

#[test]
fn probes_use_the_health_paths_on_a_declared_container_port() {
    let resources = resources();
    let mut http_probes = 0;
    for (workload, pod, _) in pod_templates(&resources) {
        for container in containers(pod) {
            let cname = container["name"].as_str().unwrap_or("?");
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let p = &container[probe];
                if p.is_badvalue() {
                    continue;
                }
                if !p["httpGet"].is_badvalue() {
                    let path = p["httpGet"]["path"].as_str().expect("probe path");
                    assert!(
                        contract::HEALTH_PATHS.contains(&path),
                        "{workload}/{cname} {probe}: {path} is not a health path of the service"
                    );
                    http_probes += 1;
                }
                let port = ["httpGet", "tcpSocket", "grpc"]
                    .iter()
                    .map(|k| &p[*k]["port"])
                    .find(|port| !port.is_badvalue())
                    .unwrap_or_else(|| panic!("{workload}/{cname} {probe}: no port"));
                assert!(
                    declares_port(container, port),
                    "{workload}/{cname} {probe}: port {port:?} is not a port of the container"
                );
            }
        }
    }
    assert!(http_probes >= 3, "the service's three probes");
}

#[test]
fn the_service_deployment_wires_each_probe_to_its_path_and_outlasts_the_shutdown_grace() {
    let resources = resources();
    let deployment = named(&resources, "Deployment", "reprise-shop");
    assert!(
        deployment["spec"]["replicas"].is_badvalue(),
        "no replicas in the Deployment: the HPA owns the count"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let shop = pod["containers"]
        .as_vec()
        .expect("containers")
        .iter()
        .find(|c| files::strings(&c["args"]).first() == Some(&"serve"))
        .expect("a container running `serve`");
    for (probe, path) in [
        ("livenessProbe", contract::HEALTH_LIVE),
        ("readinessProbe", contract::HEALTH_READY),
        ("startupProbe", contract::HEALTH_STARTUP),
    ] {
        assert_eq!(
            shop[probe]["httpGet"]["path"].as_str(),
            Some(path),
            "{probe} → {path}"
        );
    }
    let port = shop["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .expect("port http");
    assert_eq!(
        port["containerPort"].as_i64(),
        Some(i64::from(contract::SERVICE_PORT))
    );
    // Startup may take two consumer-group session timeouts + 5 s (95 s with librdkafka's
    // 45 s default, docs/event-bus.md).
    let startup = &shop["startupProbe"];
    let budget = startup["periodSeconds"].as_i64().unwrap_or(10)
        * startup["failureThreshold"].as_i64().unwrap_or(3);
    assert!(budget >= 95, "startup budget {budget} s < one group join");

    let config = string_map(&named(&resources, "ConfigMap", "reprise-shop")["data"]);
    let shutdown_grace_ms = config
        .get("SHOP_SHUTDOWN_GRACE_MS")
        .map_or(contract::DEFAULT_SHUTDOWN_GRACE_MS, |v| {
            v.parse().expect("SHOP_SHUTDOWN_GRACE_MS is a number")
        });
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    let pre_stop_sleep = files::strings(&shop["lifecycle"]["preStop"]["exec"]["command"])
        .get(1)
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    assert!(
        grace * 1000 > pre_stop_sleep * 1000 + shutdown_grace_ms,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop_sleep} s + the service's \
         shutdown grace {shutdown_grace_ms} ms"
    );
    let init = pod["initContainers"]
        .as_vec()
        .expect("schema check init container");
    assert!(
        init.iter()
            .any(|c| files::strings(&c["args"]) == ["migrate", "--check"]),
        "an init container verifies the schema (`migrate --check`)"
    );
}

#[test]
fn containers_run_the_binary_s_subcommands_non_root_with_resources() {
    let resources = resources();
    let mut subcommands = BTreeSet::new();
    for (workload, pod, _) in pod_templates(&resources) {
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{workload}: runAsNonRoot"
        );
        for container in containers(pod) {
            let cname = container["name"].as_str().unwrap_or("?");
            assert_eq!(
                container["image"].as_str(),
                Some(contract::BINARY),
                "{workload}/{cname}: the image kustomization.yaml sets"
            );
            let args = files::strings(&container["args"]);
            let sub = *args.first().expect("a subcommand");
            assert!(
                contract::SUBCOMMANDS.contains(&sub),
                "{workload}/{cname}: unknown subcommand {sub}"
            );
            subcommands.insert(sub);
            let resources = &container["resources"];
            for key in ["cpu", "memory"] {
                assert!(
                    !resources["requests"][key].is_badvalue(),
                    "{workload}/{cname}: requests.{key}"
                );
            }
            assert!(
                !resources["limits"]["memory"].is_badvalue(),
                "{workload}/{cname}: limits.memory"
            );
            assert_eq!(
                container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{workload}/{cname}: allowPrivilegeEscalation false"
            );
        }
    }
    let all: BTreeSet<&str> = contract::SUBCOMMANDS.iter().copied().collect();
    assert_eq!(subcommands, all, "every subcommand is deployed");
    let job = named(&resources, "Job", "reprise-shop-migrate");
    let pod = &job["spec"]["template"]["spec"];
    assert!(matches!(
        pod["restartPolicy"].as_str(),
        Some("Never" | "OnFailure")
    ));
    assert_eq!(files::strings(&pod["containers"][0]["args"]), ["migrate"]);
}

#[test]
fn config_and_secret_hold_the_contract_s_variables_and_urls_match_the_services() {
    let resources = resources();
    let config = string_map(&named(&resources, "ConfigMap", "reprise-shop")["data"]);
    let secret = string_map(&named(&resources, "Secret", "reprise-shop")["stringData"]);
    let mut keys: BTreeSet<&str> = config.keys().map(String::as_str).collect();
    keys.extend(secret.keys().map(String::as_str));
    for key in &keys {
        assert!(
            contract::is_known_env(key),
            "{key} is not an environment variable of the service"
        );
    }
    for required in contract::REQUIRED_SERVE_ENV {
        assert!(keys.contains(required), "{required} is set");
    }
    assert!(
        secret.contains_key("DATABASE_URL"),
        "credentials in the Secret"
    );
    assert_eq!(
        config["SHOP_LISTEN"],
        format!("0.0.0.0:{}", contract::SERVICE_PORT)
    );
    // Every envFrom reference exists.
    for (workload, pod, _) in pod_templates(&resources) {
        for container in containers(pod) {
            for source in container["envFrom"].as_vec().into_iter().flatten() {
                if let Some(name) = source["configMapRef"]["name"].as_str() {
                    let _ = named(&resources, "ConfigMap", name);
                }
                if let Some(name) = source["secretRef"]["name"].as_str() {
                    let _ = named(&resources, "Secret", name);
                }
            }
            for env in container["env"].as_vec().into_iter().flatten() {
                let name = env["name"].as_str().expect("env name");
                assert!(
                    contract::is_known_env(name),
                    "{workload}: {name} is not a variable of the service"
                );
            }
        }
    }
    // The provider URLs name the providers' Services on their ports.
    for (key, service, port) in [
        (
            "SHOP_PAYMENT_URL",
            "reprise-payment-provider",
            contract::PAYMENT_PROVIDER_PORT,
        ),
        (
            "SHOP_CARRIER_URL",
            "reprise-carrier",
            contract::CARRIER_PORT,
        ),
    ] {
        assert_eq!(config[key], format!("http://{service}:{port}"));
        let svc = named(&resources, "Service", service);
        assert!(
            svc["spec"]["ports"]
                .as_vec()
                .expect("ports")
                .iter()
                .any(|p| p["port"].as_i64() == Some(i64::from(port))),
            "Service {service} listens on {port}"
        );
    }
}

#[test]
fn services_hpa_and_pdb_select_existing_pods_and_ports() {
    let resources = resources();
    let pods = pod_templates(&resources);
    for service in of_kind(&resources, "Service") {
        let name = service["metadata"]["name"].as_str().expect("name");
        let selector = string_map(&service["spec"]["selector"]);
        let (_, pod, _) = pods
            .iter()
            .find(|(_, _, labels)| selects(&selector, labels))
            .unwrap_or_else(|| panic!("Service {name} selects no pod template"));
        let matching: Vec<_> = pods
            .iter()
            .filter(|(_, _, labels)| selects(&selector, labels))
            .collect();
        assert_eq!(matching.len(), 1, "Service {name} selects one workload");
        for port in service["spec"]["ports"].as_vec().expect("ports") {
            let target = &port["targetPort"];
            assert!(
                containers(pod).iter().any(|c| declares_port(c, target)),
                "Service {name}: targetPort {target:?} is not a container port"
            );
        }
    }
    let shop_labels = &pods
        .iter()
        .find(|(name, _, _)| name == "reprise-shop")
        .expect("reprise-shop")
        .2;
    let pdb = named(&resources, "PodDisruptionBudget", "reprise-shop");
    assert!(selects(
        &string_map(&pdb["spec"]["selector"]["matchLabels"]),
        shop_labels
    ));
    let hpa = named(&resources, "HorizontalPodAutoscaler", "reprise-shop");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"].as_str(), Some("Deployment"));
    let _ = named(
        &resources,
        "Deployment",
        target["name"].as_str().expect("target"),
    );
    let min = hpa["spec"]["minReplicas"].as_i64().expect("minReplicas");
    let max = hpa["spec"]["maxReplicas"].as_i64().expect("maxReplicas");
    assert!(min >= 2, "at least two replicas: the PDB then lets one go");
    // A replica is ready only while it holds a partition of every consumer group: at
    // maxReplicas, a rollout's surge pod must still find one.
    let config = string_map(&named(&resources, "ConfigMap", "reprise-shop")["data"]);
    let partitions = config
        .get("SHOP_PARTITIONS")
        .map_or(contract::DEFAULT_PARTITIONS, |v| {
            v.parse().expect("SHOP_PARTITIONS is a number")
        });
    let deployment = named(&resources, "Deployment", "reprise-shop");
    let surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        .as_i64()
        .expect("maxSurge as a number of pods");
    assert!(
        max + surge <= partitions,
        "maxReplicas {max} + maxSurge {surge} > {partitions} partitions (SHOP_PARTITIONS): \
         a replica without a partition of every group never becomes ready"
    );
}
