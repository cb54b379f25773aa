#!/usr/bin/env bash
# Starts the local PostgreSQL 15 cluster (if it is not running) and provisions the role and
# database the integration tests, benchmarks and backup drill use. Idempotent: run it as
# often as you like; a second run changes nothing but re-asserting the password.
#
# Output contract (so CI and humans can both use it):
#   - stdout: exactly one line, `export DATABASE_URL=...`  ->  eval "$(scripts/postgres.sh)"
#   - the same line is written to $REPRISE_PG_ENV_FILE (default /tmp/reprise-postgres.env)
#     ->  scripts/postgres.sh >/dev/null && . /tmp/reprise-postgres.env
#   - progress and errors go to stderr; any failure exits non-zero (tests must never run
#     against a database that is silently missing).
#
# Must run as root (pg_ctlcluster, and `su postgres` for peer authentication on the socket).
# The credentials are for a loopback-only test database; production deployments provision
# their own role (docs/database.md).
set -euo pipefail

PG_VERSION="${PG_VERSION:-15}"
PG_CLUSTER="${PG_CLUSTER:-main}"
PG_PORT="${PG_PORT:-5432}"
PG_ROLE="${REPRISE_PG_ROLE:-reprise}"
PG_PASSWORD="${REPRISE_PG_PASSWORD:-reprise-test-only}"
PG_DATABASE="${REPRISE_PG_DATABASE:-reprise_test}"
ENV_FILE="${REPRISE_PG_ENV_FILE:-/tmp/reprise-postgres.env}"

log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$(id -u)" == 0 ]] || die "run as root (pg_ctlcluster and peer auth need it)"
command -v pg_ctlcluster >/dev/null || die "pg_ctlcluster not found: install postgresql-${PG_VERSION}"

# Identifiers are interpolated into SQL below: refuse anything but plain names.
for name in "$PG_ROLE" "$PG_DATABASE"; do
  [[ "$name" =~ ^[a-z_][a-z0-9_]*$ ]] || die "refusing unusual identifier '$name'"
done
[[ "$PG_PASSWORD" != *"'"* ]] || die "the password may not contain a single quote"

if ! pg_lsclusters --no-header | awk '{print $1"/"$2}' | grep -qx "${PG_VERSION}/${PG_CLUSTER}"; then
  log "creating cluster ${PG_VERSION}/${PG_CLUSTER}"
  pg_createcluster --port "$PG_PORT" "$PG_VERSION" "$PG_CLUSTER" >&2
fi

status="$(pg_lsclusters --no-header | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $4}')"
if [[ "$status" != online* ]]; then
  log "starting cluster ${PG_VERSION}/${PG_CLUSTER} (was: ${status:-unknown})"
  pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start >&2
fi

for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
  sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL is not accepting TCP connections on 127.0.0.1:${PG_PORT}"

psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -X -q -p ${PG_PORT} $*"; }

# scram-sha-256 is the default password_encryption in 15; set it explicitly so the hash
# matches the pg_hba.conf `host ... scram-sha-256` lines whatever the server default.
psql_admin "-d postgres" >&2 <<SQL
SET password_encryption = 'scram-sha-256';
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${PG_ROLE}') THEN
    CREATE ROLE ${PG_ROLE} LOGIN;
  END IF;
END
\$\$;
ALTER ROLE ${PG_ROLE} WITH LOGIN PASSWORD '${PG_PASSWORD}';
SQL

if [[ "$(psql_admin "-d postgres -tAc \"SELECT 1 FROM pg_database WHERE datname = '${PG_DATABASE}'\"")" != 1 ]]; then
  log "creating database ${PG_DATABASE}"
  psql_admin "-d postgres -c \"CREATE DATABASE ${PG_DATABASE} OWNER ${PG_ROLE}\"" >&2
fi

url="postgres://${PG_ROLE}:${PG_PASSWORD}@127.0.0.1:${PG_PORT}/${PG_DATABASE}"
# Prove the URL works the way the tests will use it: TCP + password, not the socket.
PGPASSWORD="$PG_PASSWORD" psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_ROLE" -d "$PG_DATABASE" \
  -tAc "SELECT 1" >/dev/null || die "cannot log in over TCP as ${PG_ROLE}"

echo "export DATABASE_URL=${url}" >"$ENV_FILE"
log "ready: ${PG_DATABASE} on 127.0.0.1:${PG_PORT} (env in ${ENV_FILE})"
echo "export DATABASE_URL=${url}"
