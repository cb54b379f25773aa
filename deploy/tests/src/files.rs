//! Reading the artifacts: paths are relative to the repository root.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

/// The repository root.
#[must_use]
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file's text.
///
/// # Panics
/// When it cannot be read.
#[must_use]
pub fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Every YAML document of a file.
///
/// # Panics
/// When it cannot be read or is not valid YAML.
#[must_use]
pub fn yaml(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

/// The single YAML document of a file.
///
/// # Panics
/// As [`yaml`], and when the file holds more or fewer than one document.
#[must_use]
pub fn yaml_one(rel: &str) -> Yaml {
    let mut docs = yaml(rel);
    assert_eq!(docs.len(), 1, "{rel}: one YAML document");
    docs.remove(0)
}

/// A JSON file.
///
/// # Panics
/// When it cannot be read or is not valid JSON.
#[must_use]
pub fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid JSON: {e}"))
}

/// Every file under a directory (recursively), as sorted paths relative to the root.
///
/// # Panics
/// When the directory cannot be listed.
#[must_use]
pub fn under(rel_dir: &str) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("list {dir:?}: {e}"));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let root = root();
    let mut out = Vec::new();
    walk(&root.join(rel_dir), &mut out);
    let mut rel: Vec<String> = out
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    rel.sort();
    rel
}

/// The strings of a YAML sequence (non-strings left out).
#[must_use]
pub fn strings(node: &Yaml) -> Vec<&str> {
    node.as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

/// A YAML mapping's string keys, in file order.
#[must_use]
pub fn keys(node: &Yaml) -> Vec<&str> {
    node.as_hash()
        .map(|h| h.keys().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

/// The anchors of a Markdown file's headings, as GitHub derives them (lowercase, spaces to
/// `-`, punctuation other than `-` and `_` dropped).
#[must_use]
pub fn markdown_anchors(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut anchors = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let anchor: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        anchors.push(anchor);
    }
    anchors
}
