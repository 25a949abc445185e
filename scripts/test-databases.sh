#!/usr/bin/env bash
# Starts the database servers the ERP-source tests use, each on a free port of 127.0.0.1 with its own data
# folder, and prints the variables that point the tests at them:
#
#     eval "$(scripts/test-databases.sh)"    # then: cargo test
#
# Idempotent: servers already started by an earlier run (same state folder) are reused. `stop` stops them.
# Needs PostgreSQL (/usr/lib/postgresql/*/bin or on PATH) and MariaDB (mariadb-install-db, mariadbd); a missing
# server is reported on stderr and its variable is not printed, so its tests skip (and fail under FERRY_CI=1).
# Both servers also accept TLS, with a certificate for 127.0.0.1 from a test CA (FERRY_TEST_DB_CA; needs openssl).
# Only messages go to stderr; stdout holds nothing but `export` lines.
set -euo pipefail

STATE="${FERRY_TEST_DB_DIR:-${TMPDIR:-/tmp}/ferry-test-databases}"
PG_PASSWORD="ferry-pg-test-pw"
MY_PASSWORD="ferry-my-test-pw"
mkdir -p "$STATE"
chmod 755 "$STATE"
log() { echo "test-databases: $*" >&2; }

free_port() { # the first port from $1 up that nothing listens on
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

make_certs() { # a test CA and a server certificate for 127.0.0.1, so both servers also speak TLS
  local t="$STATE/tls"
  if [ -f "$t/server.crt" ]; then return 0; fi
  if ! command -v openssl >/dev/null; then log "openssl not found: the servers run without TLS"; return 1; fi
  mkdir -p "$t"
  (
    cd "$t"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=ferry test CA" \
      -keyout ca.key -out ca.crt
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > ext.cnf
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile ext.cnf \
      -out server.crt
  ) >"$STATE/tls.log" 2>&1 || { log "making the test certificates failed, see $STATE/tls.log"; rm -rf "$t"; return 1; }
  chmod 644 "$t/ca.crt" "$t/server.crt"
}

# copies the server certificate and key into $1 (owned by $2, key 0600); prints nothing
install_cert() {
  [ -f "$STATE/tls/server.crt" ] || return 1
  cp "$STATE/tls/server.crt" "$STATE/tls/server.key" "$1/"
  chmod 600 "$1/server.key"
  if [ "$(id -u)" = 0 ] && [ -n "${2:-}" ]; then chown "$2": "$1/server.crt" "$1/server.key"; fi
}

as_pg_user() { # postgres refuses to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  local bin=""
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) /usr/local/bin /usr/local/pgsql/bin; do
    if [ -x "$d/pg_ctl" ]; then bin=$d; break; fi
  done
  if [ -z "$bin" ] && command -v pg_ctl >/dev/null; then bin=$(dirname "$(command -v pg_ctl)"); fi
  if [ -z "$bin" ]; then log "PostgreSQL not found (install the postgresql package); its tests will skip"; return 1; fi
  local dir="$STATE/postgres"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  local port
  if [ -f "$dir/port" ] && as_pg_user "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    port=$(cat "$dir/port")
  else
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_pg_user bash -c "echo '$PG_PASSWORD' > '$dir/pw' && '$bin/initdb' -D '$dir/data' -U postgres -E UTF8 \
        --locale=C --auth-local=trust --auth-host=scram-sha-256 --pwfile='$dir/pw'" >"$dir/initdb.log" 2>&1 \
        || { log "initdb failed, see $dir/initdb.log"; return 1; }
    fi
    port=$(free_port 54329)
    local ssl=""
    if install_cert "$dir" postgres; then
      ssl="-c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key"
    fi
    as_pg_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 $ssl" start >/dev/null \
      || { log "PostgreSQL did not start, see $dir/server.log"; return 1; }
    echo "$port" > "$dir/port"
    as_pg_user "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ferry') THEN
    CREATE ROLE ferry LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE ferry OWNER ferry' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'ferry')\gexec
SQL
    log "PostgreSQL ($bin) on 127.0.0.1:$port, data in $dir"
  fi
  echo "export FERRY_TEST_POSTGRES_URL=postgres://ferry:$PG_PASSWORD@127.0.0.1:$port/ferry"
  # the same server in parts, for the ODBC connection string .ci/run builds
  echo "export FERRY_TEST_POSTGRES_HOST=127.0.0.1 FERRY_TEST_POSTGRES_PORT=$port FERRY_TEST_POSTGRES_DB=ferry"
  echo "export FERRY_TEST_POSTGRES_USER=ferry FERRY_TEST_POSTGRES_PASSWORD=$PG_PASSWORD"
}

start_mariadb() {
  local mysqld
  mysqld=$(command -v mariadbd || command -v mysqld || ls /usr/sbin/mariadbd /usr/sbin/mysqld 2>/dev/null | head -1 || true)
  if [ -z "$mysqld" ] || ! command -v mariadb-install-db >/dev/null; then
    log "MariaDB not found (install the mariadb-server package); its tests will skip"
    return 1
  fi
  local dir="$STATE/mariadb"
  mkdir -p "$dir"
  local port
  if [ -f "$dir/port" ] && mariadb-admin --no-defaults --socket="$dir/mysqld.sock" -u"$(id -un)" ping >/dev/null 2>&1; then
    port=$(cat "$dir/port")
  else
    if [ ! -d "$dir/data/mysql" ]; then
      mariadb-install-db --no-defaults --datadir="$dir/data" --user="$(id -un)" --auth-root-authentication-method=socket \
        --skip-test-db >"$dir/install.log" 2>&1 || { log "mariadb-install-db failed, see $dir/install.log"; return 1; }
    fi
    port=$(free_port 33069)
    local ssl=()
    if install_cert "$dir" "$(id -un)"; then
      ssl=(--ssl-ca="$STATE/tls/ca.crt" --ssl-cert="$dir/server.crt" --ssl-key="$dir/server.key")
    fi
    setsid nohup "$mysqld" --no-defaults "${ssl[@]}" --datadir="$dir/data" --socket="$dir/mysqld.sock" --port="$port" \
      --bind-address=127.0.0.1 --skip-name-resolve --user="$(id -un)" --pid-file="$dir/mysqld.pid" \
      --log-error="$dir/server.log" --innodb-flush-log-at-trx-commit=0 --character-set-server=utf8mb4 \
      --collation-server=utf8mb4_general_ci </dev/null >/dev/null 2>&1 &
    for _ in $(seq 1 60); do
      mariadb-admin --no-defaults --socket="$dir/mysqld.sock" -u"$(id -un)" ping >/dev/null 2>&1 && break
      sleep 1
    done
    mariadb-admin --no-defaults --socket="$dir/mysqld.sock" -u"$(id -un)" ping >/dev/null 2>&1 \
      || { log "MariaDB did not start, see $dir/server.log"; return 1; }
    echo "$port" > "$dir/port"
    mariadb --no-defaults --socket="$dir/mysqld.sock" -u"$(id -un)" <<SQL
CREATE USER IF NOT EXISTS 'ferry'@'%' IDENTIFIED BY '$MY_PASSWORD';
GRANT ALL PRIVILEGES ON *.* TO 'ferry'@'%';
CREATE DATABASE IF NOT EXISTS ferry;
SQL
    log "MariaDB ($mysqld) on 127.0.0.1:$port, data in $dir"
  fi
  echo "export FERRY_TEST_MYSQL_URL=mysql://ferry:$MY_PASSWORD@127.0.0.1:$port/ferry"
}

stop_all() {
  local dir="$STATE/postgres"
  if [ -d "$dir/data" ]; then
    for bin in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null) /usr/local/bin; do
      [ -x "$bin/pg_ctl" ] && as_pg_user "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 && break
    done
  fi
  dir="$STATE/mariadb"
  if [ -f "$dir/mysqld.pid" ]; then
    mariadb-admin --no-defaults --socket="$dir/mysqld.sock" -u"$(id -un)" shutdown >/dev/null 2>&1 || true
  fi
  log "stopped the servers in $STATE"
}

case "${1:-start}" in
  start)
    make_certs || true
    start_postgres || true
    start_mariadb || true
    # servers started by an older version of this script may still run without TLS: `stop`, then start again
    if [ -f "$STATE/tls/ca.crt" ]; then echo "export FERRY_TEST_DB_CA=$STATE/tls/ca.crt"; fi
    ;;
  stop) stop_all ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
