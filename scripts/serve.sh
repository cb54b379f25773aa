#!/usr/bin/env bash
# Runs the production-ready checkout service locally (docs/production-service.md):
# PostgreSQL and the Kafka-API broker (through scripts/postgres.sh and scripts/kafka.sh),
# the schema migrations, the fake payment provider and carrier, and the service — all on
# loopback, in the background. Idempotent: whatever already runs and answers is reused.
#
#   eval "$(bash scripts/serve.sh)"      # start (or reuse); then: curl "$SHOP_URL/health/ready"
#   bash scripts/serve.sh stop           # stop what this script started
#
# Output contract (as scripts/postgres.sh and scripts/kafka.sh):
#   - stdout: exactly one line, `export SHOP_URL=http://127.0.0.1:8080`
#   - the same line is written to $SHOP_ENV_FILE (default /tmp/reprise-shop.env)
#   - progress and errors go to stderr; any failure exits non-zero
#   - logs and pid files live in $SHOP_RUN_DIR (default /tmp/reprise-shop), named on stderr
#
# `stop` sends SIGTERM to the service and the providers (the service drains and exits
# within its grace), then stops PostgreSQL and the broker only if this script was the one
# that started them (other tools share them otherwise).
#
# Environment (all optional):
#   SHOP_PORT / SHOP_PAYMENT_PORT / SHOP_CARRIER_PORT   default 8080 / 8081 / 8082
#   SHOP_SCHEMA            PostgreSQL schema                      (default shop)
#   SHOP_TOPIC_PREFIX      prefix of topics and consumer groups   (default none)
#   SHOP_PROFILE           cargo profile to build: dev | release  (default dev)
#   SHOP_BIN               use this reprise-shop binary instead of building one
#   SHOP_READY_SECONDS     bound on the readiness wait            (default 90)
#   SHOP_LATENCY_MS, SHOP_ERROR_RATE, SHOP_OUTAGE   passed to both fake providers
#   RUST_LOG               log filter of all three processes      (default info)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

HOST=127.0.0.1
SHOP_PORT="${SHOP_PORT:-8080}"
PAYMENT_PORT="${SHOP_PAYMENT_PORT:-8081}"
CARRIER_PORT="${SHOP_CARRIER_PORT:-8082}"
SCHEMA="${SHOP_SCHEMA:-shop}"
RUN_DIR="${SHOP_RUN_DIR:-/tmp/reprise-shop}"
ENV_FILE="${SHOP_ENV_FILE:-/tmp/reprise-shop.env}"
PROFILE="${SHOP_PROFILE:-dev}"
READY_SECONDS="${SHOP_READY_SECONDS:-90}"
GRACE_MS="${SHOP_SHUTDOWN_GRACE_MS:-10000}"

log() { echo "serve.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

for port in "$SHOP_PORT" "$PAYMENT_PORT" "$CARRIER_PORT" "$READY_SECONDS"; do
  [[ "$port" =~ ^[0-9]+$ ]] || die "ports and SHOP_READY_SECONDS must be numbers, got '$port'"
done
mkdir -p "$RUN_DIR"

port_open() { (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null; }

# The HTTP status of GET http://HOST:PORT/PATH, or nothing (bash's /dev/tcp: no curl needed).
http_status() {
  (
    exec 3<>"/dev/tcp/${HOST}/$1" || exit 0
    printf 'GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$2" "$HOST" "$1" >&3
    line=""
    IFS= read -r -t 10 line <&3 || true
    line="${line%$'\r'}"
    if [[ "$line" =~ ^HTTP/1\.[01]\ ([0-9]{3}) ]]; then echo "${BASH_REMATCH[1]}"; fi
  ) 2>/dev/null
  return 0
}

# A process that exited but was not reaped yet (a zombie: we are not its parent) is gone.
pid_alive() { kill -0 "$1" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"; }
alive() { [[ -f "$RUN_DIR/$1.pid" ]] && pid_alive "$(cat "$RUN_DIR/$1.pid")"; }

stop_one() {
  local name="$1" pid
  if ! alive "$name"; then
    rm -f "$RUN_DIR/$name.pid"
    return
  fi
  pid="$(cat "$RUN_DIR/$name.pid")"
  log "stopping $name (pid $pid, SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + GRACE_MS / 1000 + 5))
  while pid_alive "$pid"; do
    if (( SECONDS >= deadline )); then
      log "$name did not exit in time; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  rm -f "$RUN_DIR/$name.pid"
}

if [[ "${1:-}" == "stop" ]]; then
  stop_one service
  stop_one payment-provider
  stop_one carrier
  if [[ -f "$RUN_DIR/started-broker" ]]; then
    pid_file="${REPRISE_KAFKA_PID:-/tmp/reprise-kafka.pid}"
    if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
      log "stopping the broker this script started (pid $(cat "$pid_file"))"
      kill -TERM "$(cat "$pid_file")" || true
    fi
    rm -f "$RUN_DIR/started-broker"
  fi
  if [[ -f "$RUN_DIR/started-postgres" ]]; then
    read -r version cluster <"$RUN_DIR/started-postgres" || true
    log "stopping PostgreSQL ${version}/${cluster}, which this script started"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" stop >&2 || true
    rm -f "$RUN_DIR/started-postgres"
  fi
  rm -f "$ENV_FILE"
  log "stopped (logs kept in $RUN_DIR)"
  exit 0
fi
[[ -z "${1:-}" || "${1:-}" == "start" ]] || die "usage: scripts/serve.sh [start|stop]"

# --- PostgreSQL and the broker --------------------------------------------------------
PG_VERSION="${PG_VERSION:-15}"
PG_CLUSTER="${PG_CLUSTER:-main}"
if ! pg_isready -q -h 127.0.0.1 -p "${PG_PORT:-5432}" 2>/dev/null; then
  echo "$PG_VERSION $PG_CLUSTER" >"$RUN_DIR/started-postgres"
fi
eval "$(bash scripts/postgres.sh)"
export DATABASE_URL

if ! (exec 3<>"/dev/tcp/${KAFKA_HOST:-127.0.0.1}/${KAFKA_PORT:-9092}") 2>/dev/null; then
  touch "$RUN_DIR/started-broker"
fi
eval "$(bash scripts/kafka.sh)"
export KAFKA_BOOTSTRAP

# --- the binary -----------------------------------------------------------------------
if [[ -n "${SHOP_BIN:-}" ]]; then
  BIN="$SHOP_BIN"
else
  target="${CARGO_TARGET_DIR:-$ROOT/target}"
  case "$PROFILE" in
    dev) flags=(); BIN="$target/debug/reprise-shop" ;;
    release) flags=(--release); BIN="$target/release/reprise-shop" ;;
    *) die "SHOP_PROFILE must be dev or release, got '$PROFILE'" ;;
  esac
  log "building reprise-shop (cargo, profile $PROFILE)"
  cargo build -q --locked -p reprise-shop "${flags[@]}" >&2 || die "cargo build failed"
fi
[[ -x "$BIN" ]] || die "$BIN is not an executable"

# --- migrations -----------------------------------------------------------------------
log "migrating schema $SCHEMA"
"$BIN" migrate --schema "$SCHEMA" >&2 || die "migration of schema $SCHEMA failed"

# --- processes ------------------------------------------------------------------------
export RUST_LOG="${RUST_LOG:-info}"

# start NAME PORT HEALTH_PATH ARGS...: reuse a running instance, or start one.
start() {
  local name="$1" port="$2" health="$3"
  shift 3
  if alive "$name"; then
    log "$name already runs (pid $(cat "$RUN_DIR/$name.pid")); reusing it"
    return
  fi
  if port_open "$port"; then
    die "${HOST}:${port} is taken by something this script did not start (wanted for $name)"
  fi
  log "starting $name on ${HOST}:${port} (log: $RUN_DIR/$name.log)"
  setsid "$BIN" "$@" >>"$RUN_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  local deadline=$((SECONDS + 30))
  until [[ "$(http_status "$port" "$health")" =~ ^(200|503)$ ]]; do
    alive "$name" || { tail -n 20 "$RUN_DIR/$name.log" >&2; die "$name exited during start-up"; }
    (( SECONDS < deadline )) || { tail -n 20 "$RUN_DIR/$name.log" >&2; die "$name did not answer on ${HOST}:${port}"; }
    sleep 0.2
  done
}

start payment-provider "$PAYMENT_PORT" /health/live payment-provider --listen "${HOST}:${PAYMENT_PORT}"
start carrier "$CARRIER_PORT" /health/live carrier --listen "${HOST}:${CARRIER_PORT}"
SHOP_SCHEMA="$SCHEMA" \
SHOP_PAYMENT_URL="http://${HOST}:${PAYMENT_PORT}" \
SHOP_CARRIER_URL="http://${HOST}:${CARRIER_PORT}" \
SHOP_SHUTDOWN_GRACE_MS="$GRACE_MS" \
  start service "$SHOP_PORT" /health/live serve --listen "${HOST}:${SHOP_PORT}"

log "waiting for ${HOST}:${SHOP_PORT}/health/ready (up to ${READY_SECONDS}s)"
deadline=$((SECONDS + READY_SECONDS))
until [[ "$(http_status "$SHOP_PORT" /health/ready)" == 200 ]]; do
  alive service || { tail -n 20 "$RUN_DIR/service.log" >&2; die "the service exited; see $RUN_DIR/service.log"; }
  (( SECONDS < deadline )) || { tail -n 20 "$RUN_DIR/service.log" >&2; die "not ready within ${READY_SECONDS}s; see $RUN_DIR/service.log"; }
  sleep 0.5
done

url="http://${HOST}:${SHOP_PORT}"
echo "export SHOP_URL=${url}" >"$ENV_FILE"
log "ready: the shop on ${url} (schema ${SCHEMA}; logs in ${RUN_DIR}; env in ${ENV_FILE}; stop: bash scripts/serve.sh stop)"
echo "export SHOP_URL=${url}"
