#!/usr/bin/env bash
# Backup/restore drill for a Reprise event-store database: fingerprint, dump, DROP the
# database, restore, fingerprint again, compare. Proves the backups restore and measures the
# restore time (the RTO ingredient). See docs/runbooks/backup-restore.md.
#
#   CONFIRM_DROP=<database> docs/runbooks/backup-restore.sh <DATABASE_URL> [BACKUP_DIR]
#
# DATABASE_URL connects as the database owner (dump and restore run as that role).
# Dropping and re-creating the database needs an administrator: ADMIN_URL (a URL to the
# `postgres` database as a superuser or CREATEDB role), or, when run as root on the database
# host, the `postgres` OS user over the local socket.
#
# It DROPS THE DATABASE. CONFIRM_DROP must name it, so a mistyped URL cannot destroy data.
# Exit status 0 only if every fingerprint matches after the restore.
set -euo pipefail

url="${1:?usage: CONFIRM_DROP=<db> $0 DATABASE_URL [BACKUP_DIR]}"
backup_dir="${2:-/var/backups/reprise}"
log() { echo "backup-restore: $*" >&2; }
die() { log "error: $*"; exit 1; }

psql_db() { psql "$url" -X -q -v ON_ERROR_STOP=1 -At "$@"; }
psql_admin() {
  if [[ -n "${ADMIN_URL:-}" ]]; then
    psql "$ADMIN_URL" -X -q -v ON_ERROR_STOP=1 -At
  elif [[ "$(id -u)" == 0 ]]; then
    su postgres -c "psql -X -q -v ON_ERROR_STOP=1 -At -d postgres"
  else
    die "set ADMIN_URL (or run as root on the database host) to drop and create the database"
  fi
}
now_ms() { date +%s%3N; }

db="$(psql_db -c 'SELECT current_database()')"
owner="$(psql_db -c 'SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()')"
[[ "${CONFIRM_DROP:-}" == "$db" ]] || die "this drops database '$db': rerun with CONFIRM_DROP=$db"
[[ "$db" =~ ^[a-z_][a-z0-9_]*$ && "$owner" =~ ^[a-z_][a-z0-9_]*$ ]] || die "unusual database or owner name"

# One line per table of every Reprise schema (any schema with an `events` table): row count
# and an md5 over all rows in a fixed order. Text forms are pinned (UTC, ISO) so the
# fingerprint depends on the data only.
fingerprint() {
  local schemas
  schemas="$(psql_db -c "SELECT table_schema FROM information_schema.tables WHERE table_name = 'events' ORDER BY 1")"
  [[ -n "$schemas" ]] || { echo "no event-store schema"; return; }
  for s in $schemas; do
    psql_db <<SQL
SET TimeZone = 'UTC'; SET DateStyle = 'ISO';
SELECT '$s.events', count(*), coalesce(max(global_position), 0),
       md5(coalesce(string_agg(md5(concat_ws('|', global_position, transaction_id, stream_id,
           stream_version, event_id, event_type, schema_version, payload::text, correlation_id,
           causation_id, traceparent, recorded_at)), '' ORDER BY global_position), ''))
  FROM $s.events;
SELECT '$s.streams', count(*), coalesce(sum(version), 0),
       md5(coalesce(string_agg(stream_id || '=' || version, ',' ORDER BY stream_id), ''))
  FROM $s.streams;
SELECT '$s.snapshots', count(*), 0,
       md5(coalesce(string_agg(concat_ws('|', stream_id, stream_version, schema_version, state::text),
           ',' ORDER BY stream_id), '')) FROM $s.snapshots;
SELECT '$s.subscription_checkpoints', count(*), 0,
       md5(coalesce(string_agg(subscription_id || '=' || position, ',' ORDER BY subscription_id), ''))
  FROM $s.subscription_checkpoints;
SELECT '$s.outbox', count(*), count(published_at),
       md5(coalesce(string_agg(concat_ws('|', id, topic, message_key, payload::text, headers::text,
           published_at), ',' ORDER BY id), '')) FROM $s.outbox;
SELECT '$s._sqlx_migrations', count(*), max(version),
       md5(string_agg(version || ':' || encode(checksum, 'hex'), ',' ORDER BY version))
  FROM $s._sqlx_migrations WHERE success;
SQL
  done
}

mkdir -p "$backup_dir"
dump="$backup_dir/${db}-$(date -u +%Y%m%dT%H%M%SZ).dump"

log "fingerprinting $db"
before="$(fingerprint)"
echo "$before" | sed 's/^/  before: /' >&2

log "dumping to $dump"
t0=$(now_ms)
pg_dump --format=custom --compress=6 --file="$dump" "$url"
t1=$(now_ms)
pg_restore --list "$dump" >/dev/null || die "the dump is unreadable"
log "dump: $((t1 - t0)) ms, $(du -h "$dump" | cut -f1)"

log "dropping database $db"
psql_admin <<SQL
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$db' AND pid <> pg_backend_pid();
DROP DATABASE $db;
CREATE DATABASE $db OWNER $owner;
SQL
t2=$(now_ms)
[[ "$(fingerprint)" == "no event-store schema" ]] || die "the database still has data after the drop"

log "restoring"
pg_restore --exit-on-error --single-transaction --no-owner --role="$owner" --dbname="$url" "$dump"
# A restore carries no planner statistics. Analyze the restored tables (the database-wide
# ANALYZE would also visit shared catalogs, which only a superuser may).
psql_db <<'SQL'
SELECT format('ANALYZE %I.%I', table_schema, table_name) FROM information_schema.tables
 WHERE table_type = 'BASE TABLE'
   AND table_schema IN (SELECT table_schema FROM information_schema.tables WHERE table_name = 'events')
\gexec
SQL
t3=$(now_ms)
log "restore (incl. ANALYZE): $((t3 - t2)) ms"

after="$(fingerprint)"
echo "$after" | sed 's/^/  after:  /' >&2
if [[ "$before" != "$after" ]]; then
  diff <(echo "$before") <(echo "$after") >&2 || true
  die "fingerprints differ: the restore is NOT faithful"
fi
events="$(echo "$after" | awk -F'|' '$1 ~ /\.events$/ {n += $2} END {print n + 0}')"
log "OK: $events events and every table identical after restore; dump $((t1 - t0)) ms, restore $((t3 - t2)) ms"
echo "backup=$dump events=$events dump_ms=$((t1 - t0)) restore_ms=$((t3 - t2))"
