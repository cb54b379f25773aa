//! The load generator's smoke run: `reprise-load` (in-process, with the flags a user
//! types) against a real service for 20 s at a low rate. Not a measurement — the figures
//! live in `docs/performance.md` — but the tool and the service meeting under load in
//! every CI run, so neither can rot: no failed request, every followed order terminal,
//! the summary and the plot written.
//!
//! Needs `DATABASE_URL` and `KAFKA_BOOTSTRAP`, like `tests/shop.rs`.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::process::ExitCode;

use serde_json::Value;
use support::{Shop, ShopOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_steady_load_is_served_and_every_followed_order_ends() {
    let shop = Shop::start("load", ShopOptions::default()).await;
    let out = shop.dir.join("load");
    let args: Vec<String> = [
        "reprise-load",
        "--url",
        &shop.url(),
        "--profile",
        "steady",
        "--rate",
        "20",
        "--duration",
        "20s",
        "--end-to-end-every",
        "5",
        "--end-to-end-wait",
        "60s",
        "--check-failures",
        "0",
        "--check-end-to-end",
        "--pid",
        &shop.service().child.id().to_string(),
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let code = tokio::task::spawn_blocking(move || reprise_load::run_args(args))
        .await
        .expect("the load run does not panic");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("summary.json")).expect("summary.json written"),
    )
    .expect("summary.json is JSON");
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", ExitCode::SUCCESS),
        "the checks failed: {summary:#}"
    );
    let measured = &summary["measured"];
    assert_eq!(summary["offered"], 400);
    assert_eq!(measured["accepted"], 400, "{measured:#}");
    assert_eq!(measured["failures"], serde_json::json!({}));
    assert!(
        measured["end_to_end_samples"].as_u64().unwrap() >= 70,
        "{measured:#}"
    );
    assert_eq!(measured["end_to_end_never_terminal"], 0);
    // The service's own counters agree: 400 orders placed during the run.
    assert_eq!(summary["cost"]["orders_placed"], 400.0);
    assert!(
        summary["cost"]["events_appended_per_order"]
            .as_f64()
            .unwrap()
            > 1.0
    );
    assert!(!summary["samples"].as_array().unwrap().is_empty());
    assert!(
        summary["drained_after_s"].is_number(),
        "backlog never drained"
    );
    let svg = std::fs::read_to_string(out.join("run.svg")).expect("run.svg written");
    assert!(
        svg.contains("<svg") && svg.contains("Backlog"),
        "{}",
        &svg[..200.min(svg.len())]
    );
}
