//! The root `Dockerfile`: a multi-stage build of the service that copies every workspace
//! member (so it keeps building as the workspace grows), and a slim, non-root runtime
//! whose entry point is the binary.

use reprise_deploy_check::{contract, files};

/// Instructions with continuation lines joined and comments dropped: (keyword, rest).
fn instructions() -> Vec<(String, String)> {
    let text = files::read("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

/// The stages: their `FROM` line and instructions.
fn stages() -> Vec<(String, Vec<(String, String)>)> {
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (keyword, rest) in instructions() {
        if keyword == "FROM" {
            stages.push((rest, Vec::new()));
        } else if let Some(stage) = stages.last_mut() {
            stage.1.push((keyword, rest));
        }
    }
    stages
}

#[test]
fn builds_the_service_in_a_builder_stage_and_runs_it_non_root_in_a_slim_one() {
    let stages = stages();
    assert!(stages.len() >= 2, "multi-stage");
    let (builder_from, builder) = &stages[0];
    assert!(
        builder_from.starts_with("rust:") && builder_from.ends_with(" AS builder"),
        "a rust builder stage: {builder_from}"
    );
    let build = builder
        .iter()
        .find(|(k, rest)| k == "RUN" && rest.contains("cargo build"))
        .map(|(_, rest)| rest.as_str())
        .expect("a cargo build");
    for flag in [
        "--release",
        "--locked",
        &format!("-p {}", contract::PACKAGE),
    ] {
        assert!(build.contains(flag), "cargo build {flag}");
    }
    assert!(
        !builder
            .iter()
            .any(|(k, rest)| k == "RUN" && rest.contains("cmake")),
        "rdkafka's bundled librdkafka builds without cmake"
    );

    let (runtime_from, runtime) = stages.last().expect("runtime stage");
    assert!(
        runtime_from.contains("-slim"),
        "slim runtime: {runtime_from}"
    );
    let last = |keyword: &str| {
        runtime
            .iter()
            .rev()
            .find(|(k, _)| k == keyword)
            .map(|(_, rest)| rest.clone())
    };
    assert_eq!(
        last("ENTRYPOINT").as_deref(),
        Some(format!("[\"{}\"]", contract::BINARY).as_str())
    );
    let user = last("USER").expect("USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid.parse::<u32>().is_ok_and(|n| n != 0),
        "a numeric non-root USER (Kubernetes' runAsNonRoot can check it): {user}"
    );
    assert!(
        runtime
            .iter()
            .any(|(k, rest)| k == "COPY" && rest.starts_with("--from=builder")),
        "the runtime takes only the binary from the builder"
    );
    let k8s_uid = files::read("deploy/k8s/shop-deployment.yaml");
    assert!(
        k8s_uid.contains(&format!("runAsUser: {uid}")),
        "the Deployment runs as the image's user {uid}"
    );
}

/// The workspace members of the root `Cargo.toml`.
fn members() -> Vec<String> {
    let manifest = files::read("Cargo.toml");
    let members_block = manifest
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("workspace members");
    members_block
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .flat_map(|line| line.split(','))
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The image builds only features the service declares (or `docker build` fails), and
/// enables `otel` (OTLP export, `OTEL_EXPORTER_OTLP_ENDPOINT`) as soon as it exists.
#[test]
fn builds_with_the_features_the_service_declares_otel_included() {
    let shop = members()
        .into_iter()
        .map(|m| format!("{m}/Cargo.toml"))
        .find(|manifest| {
            files::read(manifest).contains(&format!("name = \"{}\"", contract::PACKAGE))
        })
        .unwrap_or_else(|| panic!("no workspace member is the package {}", contract::PACKAGE));
    let manifest = files::read(&shop);
    let declared: Vec<&str> = manifest
        .split("\n[features]")
        .nth(1)
        .map(|rest| rest.split("\n[").next().unwrap_or_default())
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.trim()))
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .collect();
    let default_features = stages()[0]
        .1
        .iter()
        .find_map(|(k, rest)| {
            (k == "ARG")
                .then(|| rest.strip_prefix("FEATURES="))
                .flatten()
        })
        .expect("ARG FEATURES=… in the builder stage")
        .trim_matches('"')
        .to_owned();
    let enabled: Vec<&str> = default_features
        .split([',', ' '])
        .filter(|f| !f.is_empty())
        .collect();
    for feature in &enabled {
        assert!(
            declared.contains(feature),
            "the Dockerfile builds {} with feature {feature:?}, which {shop} does not declare \
             (declared: {declared:?})",
            contract::PACKAGE
        );
    }
    if declared.contains(&"otel") {
        assert!(
            enabled.contains(&"otel"),
            "{shop} declares `otel`: build the image with it (ARG FEATURES=otel), or \
             OTEL_EXPORTER_OTLP_ENDPOINT and Jaeger in docker-compose.yml do nothing"
        );
    } else {
        println!("{shop} declares no `otel` feature yet: the image exports no traces");
    }
}

#[test]
fn copies_every_workspace_member_and_what_the_build_embeds() {
    let members = members();
    let copied: Vec<String> = stages()[0]
        .1
        .iter()
        .filter(|(k, rest)| k == "COPY" && !rest.starts_with("--from"))
        .flat_map(|(_, rest)| {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let covered = |path: &str| {
        copied
            .iter()
            .any(|c| path == c || path.starts_with(&format!("{c}/")))
    };
    for member in &members {
        assert!(
            covered(member),
            "Dockerfile does not COPY workspace member {member}: the image would not build"
        );
    }
    for needed in ["Cargo.toml", "Cargo.lock", "migrations"] {
        assert!(covered(needed), "Dockerfile does not COPY {needed}");
    }
    for source in &copied {
        assert!(
            files::root().join(source).exists(),
            "Dockerfile copies {source}, which does not exist"
        );
    }
}
