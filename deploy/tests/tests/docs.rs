//! `docs/deployment.md`: every relative link reaches a file, and its `#section` exists.

use reprise_deploy_check::files;

const DOC: &str = "docs/deployment.md";

#[test]
fn every_relative_link_of_the_deployment_guide_resolves() {
    let text = files::read(DOC);
    let mut checked = 0;
    for part in text.split("](").skip(1) {
        let target = part.split(')').next().unwrap_or_default();
        if target.starts_with("http://") || target.starts_with("https://") {
            continue;
        }
        let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
        let rel = if path.is_empty() {
            DOC.to_owned()
        } else {
            format!("docs/{path}")
        };
        assert!(
            files::root().join(&rel).is_file(),
            "{DOC}: link to {target}: {rel} does not exist"
        );
        if !anchor.is_empty() {
            let anchors = files::markdown_anchors(&files::read(&rel));
            assert!(
                anchors.iter().any(|a| a == anchor),
                "{DOC}: link to {target}: {rel} has no section #{anchor}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} links");
}

#[test]
fn every_artifact_the_guide_names_exists() {
    let text = files::read(DOC);
    for part in text.split('`').skip(1).step_by(2) {
        let looks_like_artifact = (part.starts_with("deploy/") || part == "Dockerfile")
            && !part.contains(' ')
            && !part.contains('*');
        if looks_like_artifact {
            assert!(
                files::root().join(part).exists(),
                "{DOC} names {part}, which does not exist"
            );
        }
    }
}
