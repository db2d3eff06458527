#!/usr/bin/env bash
# Installs and starts what the tests need, on a fresh Debian machine or again on a ready one:
#   - PostgreSQL (Debian's `postgresql`), listening on 127.0.0.1:5432, with the role and database
#     the tests use:  postgresql://pecn:pecn@127.0.0.1:5432/pecn_test
#     (role `pecn` may CREATEDB: each test run makes its own database and drops it afterwards)
#   - Chromium (Debian's `chromium`, /usr/bin/chromium) for the Playwright browser tests.
# Exports nothing: the URL above is the tests' fixed default (PECN_TEST_POSTGRES_URL overrides it).
# Needs root (apt-get, starting the cluster). Idempotent; when all is installed and running it
# only checks (about a second). Nothing here is for production: the password is the user name.
set -euo pipefail

PG_PORT=5432
PG_USER=pecn
PG_PASSWORD=pecn
PG_DB=pecn_test
export DEBIAN_FRONTEND=noninteractive

log() { echo "[services] $*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "[services] must run as root (apt-get, pg_ctlcluster)" >&2
  exit 1
fi

# --- packages -----------------------------------------------------------------------------------
missing=()
dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "ok installed" || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Without any font Chromium draws text as boxes in the screenshots.
dpkg-query -W -f='${Status}' fonts-liberation 2>/dev/null | grep -q "ok installed" || missing+=(fonts-liberation)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "packages already installed (postgresql, chromium, fonts-liberation)"
fi

# --- PostgreSQL cluster on 127.0.0.1:$PG_PORT -----------------------------------------------------
# The cluster on our port (Debian's postinst normally creates `<version> main` on 5432).
cluster=$(pg_lsclusters --no-header 2>/dev/null | awk -v p="$PG_PORT" '$3 == p {print $1 " " $2; exit}')
if [ -z "$cluster" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  log "creating cluster $version main on port $PG_PORT"
  pg_createcluster "$version" main --port "$PG_PORT"
  cluster="$version main"
fi
read -r pg_version pg_name <<<"$cluster"
if pg_lsclusters --no-header | awk -v v="$pg_version" -v n="$pg_name" '$1 == v && $2 == n {print $4}' \
    | grep -q online; then
  log "cluster $pg_version/$pg_name already running on port $PG_PORT"
else
  log "starting cluster $pg_version/$pg_name on port $PG_PORT"
  pg_ctlcluster "$pg_version" "$pg_name" start
fi

psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" "$@"; }
for _ in $(seq 1 30); do
  psql_admin -tAc "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.5
done

if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != "1" ]; then
  log "creating role $PG_USER"
  psql_admin -c "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
fi
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != "1" ]; then
  log "creating database $PG_DB"
  psql_admin -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
fi

# Check what the tests will do: a password login over TCP on 127.0.0.1.
PGPASSWORD="$PG_PASSWORD" psql -X -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -tAc "SELECT 1" >/dev/null
log "postgres ready: postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
log "chromium ready: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
