#!/usr/bin/env bash
# The storage battery (crates/store's tests) against real servers: SQLite, and PostgreSQL
# and MariaDB started here on 127.0.0.1 (ports from STORAGE_BASE, default 25400) and
# stopped by PID. Each test runs once per engine with the same assertions.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/tests/e2e/lib.sh"
source "$ROOT/tests/e2e/dbservers.sh"
BASE=${STORAGE_BASE:-25400}
need_free $((BASE)) $((BASE + 1)) $((BASE + 2))
WORK=$(mktemp -d /tmp/sb-storage.XXXXXX); chmod 755 "$WORK"
start_postgres "$WORK/pg" "$BASE" || exit 1
start_mariadb "$WORK/my" $((BASE + 1)) || exit 1
# Redis for the cluster's shared state (store::shared)
redis-server --port $((BASE + 2)) --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
  --logfile "$WORK/redis.log" </dev/null &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p $((BASE + 2)) ping >/dev/null 2>&1 && break; sleep 0.1; done
cd "$ROOT"
RUST_BACKTRACE=0 SB_TEST_POSTGRES_URL="$PG_URL" SB_TEST_MYSQL_URL="$MY_URL" \
  SB_TEST_REDIS_URL="redis://127.0.0.1:$((BASE + 2))" \
  cargo test -q -p store -- --test-threads 4
