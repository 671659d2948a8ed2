#!/usr/bin/env bash
# Starts the services Settle's tests use, on 127.0.0.1, installing them when missing:
#   MariaDB (MySQL protocol) on 3306, Redis on 6379.
# Prints `export ...` lines for the environment the tests need (eval them, or source this
# file). Safe to run again: running services are left as they are.
#
#   deploy/services.sh start      start (and install) what is missing
#   deploy/services.sh status     say what answers
set -euo pipefail

MYSQL_PORT=3306
REDIS_PORT=6379

log() { echo "[services] $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_install() {
  log "installing $* (apt-get)"
  if [ -z "${SETTLE_APT_UPDATED:-}" ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    SETTLE_APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

wait_for() { # what, seconds, command...
  local what=$1 seconds=$2; shift 2
  for _ in $(seq 1 $((seconds * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "$what did not come up within ${seconds}s"; return 1
}

mysql_root_tcp() { mysql --protocol=tcp -h127.0.0.1 -P"$MYSQL_PORT" -uroot "$@"; }

start_mariadb() {
  if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then
    apt_install mariadb-server mariadb-client
  fi
  if ! mysqladmin --protocol=tcp -h127.0.0.1 -P"$MYSQL_PORT" -uroot ping >/dev/null 2>&1 \
     && ! mysqladmin -uroot ping >/dev/null 2>&1; then
    log "starting MariaDB"
    as_root mkdir -p /run/mysqld
    as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
    if [ ! -d /var/lib/mysql/mysql ]; then
      as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- \
      --user=mysql --bind-address=127.0.0.1 --port="$MYSQL_PORT"
    wait_for MariaDB 60 mysqladmin -uroot ping
  fi
  if mysql_root_tcp -e 'SELECT 1' >/dev/null 2>&1; then
    echo "export SETTLE_TEST_MYSQL_URL=mysql://root@127.0.0.1:$MYSQL_PORT"
  else
    # root answers only on the local socket (Debian's default): give the tests a user of
    # their own that logs in over TCP.
    log "creating MySQL user settle for the tests"
    as_root mysql -uroot -e "CREATE USER IF NOT EXISTS 'settle'@'127.0.0.1' IDENTIFIED BY 'settle';
      CREATE USER IF NOT EXISTS 'settle'@'localhost' IDENTIFIED BY 'settle';
      GRANT ALL PRIVILEGES ON *.* TO 'settle'@'127.0.0.1';
      GRANT ALL PRIVILEGES ON *.* TO 'settle'@'localhost'; FLUSH PRIVILEGES;"
    echo "export SETTLE_TEST_MYSQL_URL=mysql://settle:settle@127.0.0.1:$MYSQL_PORT"
  fi
  log "MariaDB answers on 127.0.0.1:$MYSQL_PORT"
}

start_redis() {
  if ! command -v redis-server >/dev/null; then
    apt_install redis-server
  fi
  if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    log "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/settle.log >&2
    wait_for Redis 20 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping
  fi
  echo "export SETTLE_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
  log "Redis answers on 127.0.0.1:$REDIS_PORT"
}

status() {
  mysqladmin --protocol=tcp -h127.0.0.1 -P"$MYSQL_PORT" -uroot ping 2>&1 || true
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>&1 || true
}

case "${1:-start}" in
  start) start_mariadb; start_redis ;;
  status) status ;;
  *) echo "usage: $0 [start|status]" >&2; exit 2 ;;
esac
