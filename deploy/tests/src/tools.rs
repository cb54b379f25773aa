//! External checkers: `promtool` (Debian package `prometheus`) when it is installed.

use std::path::PathBuf;
use std::process::Command;

use crate::files;

/// `promtool` on `PATH`, if any.
#[must_use]
pub fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
}

/// Runs `promtool` with `args` in the repository root; panics with its output unless it
/// succeeds, and returns its standard output.
///
/// # Panics
/// When promtool cannot be started or exits non-zero.
#[must_use]
pub fn run_promtool(promtool: &PathBuf, args: &[&str]) -> String {
    let output = Command::new(promtool)
        .args(args)
        .current_dir(files::root())
        .output()
        .unwrap_or_else(|e| panic!("start {promtool:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{stdout}\n{stderr}",
        args.join(" "),
        output.status
    );
    stdout
}

/// Says that a check ran on the data only, because promtool is missing.
pub fn note_without_promtool(what: &str) {
    println!(
        "promtool not on PATH: {what} checked as YAML/JSON data only \
         (install it: apt-get update && apt-get install -y --no-install-recommends prometheus)"
    );
}
