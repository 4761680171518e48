# Real database servers for the storage tests: PostgreSQL and MariaDB from their Debian
# packages, each in its own data folder under the caller's work folder, on 127.0.0.1 and a
# private socket, with a password-protected user "sb" (password "sbpw") and a database "sb".
# Sourced; the caller stops them by PID (PG_PID, MY_PID; both are added to PIDS when set).
# Both run as their system users when this runs as root (neither server runs as root).

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
# as_user USER CMD...: CMD as USER when root (setpriv execs: started with `&`, the PID is
# the command's own)
as_user() {
  local u=$1; shift
  if [ "$(id -u)" = 0 ]; then setpriv --reuid="$u" --regid="$u" --init-groups -- "$@"; else "$@"; fi
}
# the setpriv prefix for a command started in the background (a function run with `&` is a
# subshell, and its PID is not the server's)
run_as() { [ "$(id -u)" = 0 ] && echo "setpriv --reuid=$1 --regid=$1 --init-groups --"; }

# start_postgres DIR PORT [FSYNC=off]: PG_PID, PG_URL (postgres://sb:sbpw@127.0.0.1:PORT/sb),
# PG_ARGS (the server's arguments, to start it again)
start_postgres() {
  local dir=$1 port=$2 fsync=${3:-off}
  [ -x "$PG_BIN/postgres" ] || { echo "PostgreSQL is not installed (apt install postgresql)"; return 1; }
  mkdir -p "$dir"; echo sbpw > "$dir/pw"
  # TLS offered beside plain TCP (a throwaway self-signed certificate for 127.0.0.1)
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -keyout "$dir/server.key" \
    -out "$dir/server.crt" >/dev/null 2>&1 && chmod 600 "$dir/server.key"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
  as_user postgres "$PG_BIN/initdb" -D "$dir/data" -U sb --pwfile="$dir/pw" --auth=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log"; return 1; }
  PG_ARGS=(-D "$dir/data" -k "$dir" -h 127.0.0.1 -p "$port" -c fsync="$fsync" -c synchronous_commit="$fsync"
    -c full_page_writes="$fsync" -c max_connections=200)
  [ -f "$dir/server.key" ] && PG_ARGS+=(-c ssl=on -c ssl_cert_file="$dir/server.crt" -c ssl_key_file="$dir/server.key")
  $(run_as postgres) "$PG_BIN/postgres" "${PG_ARGS[@]}" >"$dir/server.log" 2>&1 &
  PG_PID=$!; PIDS+=("$PG_PID")
  local i
  for i in $(seq 100); do
    PGPASSWORD=sbpw "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U sb -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
  PGPASSWORD=sbpw "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U sb -d postgres -qc 'CREATE DATABASE sb' >/dev/null || {
    echo "PostgreSQL did not start"; tail -5 "$dir/server.log"; return 1; }
  PG_URL="postgres://sb:sbpw@127.0.0.1:$port/sb"
}

# pg_sql PORT SQL...: runs SQL as sb on database sb, prints rows as a|b
pg_sql() { local port=$1; shift; PGPASSWORD=sbpw "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U sb -d sb -v ON_ERROR_STOP=1 -Atq "$@"; }

# start_mariadb DIR PORT [FLUSH=2]: MY_PID, MY_URL (mysql://sb:sbpw@127.0.0.1:PORT/sb)
start_mariadb() {
  local dir=$1 port=$2 flush=${3:-2}
  command -v mariadbd >/dev/null || { echo "MariaDB is not installed (apt install mariadb-server)"; return 1; }
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown -R mysql: "$dir"
  as_user mysql mariadb-install-db --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal \
    --skip-test-db >"$dir/install.log" 2>&1 || { cat "$dir/install.log"; return 1; }
  $(run_as mysql) mariadbd --no-defaults --datadir="$dir/data" --socket="$dir/sock" --port="$port" \
    --bind-address=127.0.0.1 --pid-file="$dir/pid" --skip-log-bin --log-error="$dir/server.log" \
    --innodb-flush-log-at-trx-commit="$flush" --innodb-buffer-pool-size=64M --max-connections=200 &
  MY_PID=$!; PIDS+=("$MY_PID")
  local i
  for i in $(seq 150); do [ -S "$dir/sock" ] && break; sleep 0.1; done
  mariadb --no-defaults -S "$dir/sock" -uroot -e \
    "CREATE USER 'sb'@'127.0.0.1' IDENTIFIED BY 'sbpw'; CREATE USER 'sb'@'localhost' IDENTIFIED BY 'sbpw'; GRANT ALL ON *.* TO 'sb'@'127.0.0.1'; GRANT ALL ON *.* TO 'sb'@'localhost'; CREATE DATABASE sb;" || {
    echo "MariaDB did not start"; tail -5 "$dir/server.log"; return 1; }
  MY_URL="mysql://sb:sbpw@127.0.0.1:$port/sb"
}

# my_sql PORT SQL: runs SQL as sb on database sb, prints rows tab-separated
my_sql() { local port=$1; shift; mariadb --no-defaults -h 127.0.0.1 -P "$port" -u sb -psbpw sb -N -B -e "$@"; }
