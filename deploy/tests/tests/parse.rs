//! Every YAML and JSON file of `deploy/`, and the compose file, parses.

use reprise_deploy_check::files;

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let mut checked = 0;
    for rel in files::under("deploy")
        .into_iter()
        .chain(["docker-compose.yml".to_owned()])
    {
        if rel.starts_with("deploy/tests/") {
            continue;
        }
        if rel.ends_with(".yml") || rel.ends_with(".yaml") {
            let docs = files::yaml(&rel);
            assert!(!docs.is_empty(), "{rel}: no YAML document");
            for (i, doc) in docs.iter().enumerate() {
                assert!(
                    doc.as_hash().is_some(),
                    "{rel}: document {i} is not a mapping"
                );
            }
            checked += 1;
        } else if rel.ends_with(".json") {
            assert!(files::json(&rel).is_object(), "{rel}: not a JSON object");
            checked += 1;
        } else {
            panic!("{rel}: not YAML or JSON; add a check for it here");
        }
    }
    // prometheus.yml, alerts.yml, alerts.test.yml; 2 Grafana provisioning files + dashboard;
    // the Kubernetes manifests; the compose file.
    assert!(checked >= 15, "only {checked} files checked");
}
