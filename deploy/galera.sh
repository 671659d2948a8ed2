#!/usr/bin/env bash
# Starts a three-node MariaDB Galera cluster on 127.0.0.1 for Settle's tests, installing
# galera-4, mariadb-server, mariadb-client and rsync with apt-get when missing. The system
# MariaDB (3306) is not touched: each node has its own config, data directory, socket and
# log under DIR/nodeN, and runs as the invoking user (as mysql when that is root).
# Prints `export SETTLE_TEST_GALERA_URLS=...` on stdout (eval it); logs go to stderr.
# Safe to run again: running nodes are left as they are, missing ones are (re)started.
#
#   deploy/galera.sh start [DIR]   start (and install) what is missing
#   deploy/galera.sh stop [DIR]    stop the three nodes (mysqladmin shutdown, then SIGKILL)
#   deploy/galera.sh status        size, state and component of each node
#
# DIR defaults to ${TMPDIR:-/tmp}/settle-galera. Client ports 3311 3312 3313
# (SETTLE_GALERA_PORTS="a b c"); node i also uses gcomm 4710+i, IST 4720+i, SST 4730+i.
# Root has an empty password over TCP: mysql://root@127.0.0.1:PORT.
#
# Measured here (2 cores, MariaDB 10.11.19, Galera 26.4.23, the evs timeouts below):
# - Cold start (empty DIR): 10-13 s. Only node 1 gets mariadb-install-db; nodes 2 and 3
#   join with a full SST, method rsync (~3 s each). mariabackup is not installed here.
#   Restart after `stop`: ~7.5 s (node 1, marked safe_to_bootstrap, bootstraps; IST).
# - SIGKILL of one node: the other two keep their quorum (size 2, Primary); a write in
#   flight stalls ~3.3 s (evs.suspect_timeout) and then commits. `start` again recovers the
#   dead node's position (--wsrep-recover, as its grastate.dat says seqno: -1) and starts
#   it with --wsrep-start-position: it rejoins by IST, Synced within ~5 s. Without the
#   recovery it rejoins by a full SST. All three killed: `start` recovers all, bootstraps
#   the highest seqno (setting safe_to_bootstrap: 1) in ~7 s.
# - SIGSTOP of one node for 10 s: evicted after ~3.3 s (writes elsewhere stall that long).
#   After SIGCONT it still reports Synced/Primary/size 3 for ~3 s and serves stale reads;
#   a write there fails with 1180 "... Not connected to Primary Component"; it then goes
#   non-Primary (1047) and rejoins by itself by IST, Synced ~6.5 s after SIGCONT. With
#   Galera's default timeouts (SETTLE_GALERA_EVS=): eviction and stall ~6 s, stale window
#   ~6 s, Synced ~8 s after SIGCONT.
# - Partition without iptables (not installed here): on one node
#   SET GLOBAL wsrep_provider_options='gmcast.isolate=1' cuts it off within ~3.3 s
#   (non-Primary, wsrep_ready OFF, reads and writes: ERROR 1047 (08S01) WSREP has not yet
#   prepared node for application use); 'gmcast.isolate=0' heals it (IST) in ~3.7 s.
# - Conflicting writes on two nodes: the loser gets ERROR 1213 (40001) Deadlock found when
#   trying to get lock; try restarting transaction, at COMMIT (or at its next statement).
#   SELECT ... FOR UPDATE and GET_LOCK() lock on their own node only: a row locked FOR
#   UPDATE on node A is updated and committed at once on node B, and the holder on A is
#   then aborted (1213 at its next statement); GET_LOCK('x', 0) returns 1 on both nodes.
# - wsrep_sync_wait=0 (default): a read on node B right after a commit on node A can miss
#   it (seen here); SET SESSION wsrep_sync_wait=1 makes the read wait for it.
set -euo pipefail

read -r -a PORTS <<<"${SETTLE_GALERA_PORTS:-3311 3312 3313}"
[ "${#PORTS[@]}" = 3 ] || { echo "SETTLE_GALERA_PORTS needs three ports" >&2; exit 2; }
GCOMM_BASE=4710 IST_BASE=4720 SST_BASE=4730
# Shorter failure detection than Galera's defaults (suspect 5 s, inactive 15 s, install
# 7.5 s), so that tests see a dead or paused node evicted within ~3 s. SETTLE_GALERA_EVS
# replaces them (provider options, ';'-separated); SETTLE_GALERA_EVS= keeps the defaults.
EVS_OPTIONS=${SETTLE_GALERA_EVS-"evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;evs.install_timeout=PT3S;evs.inactive_check_period=PT0.5S;evs.keepalive_period=PT1S"}

log() { echo "[galera] $*" >&2; }

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

set_dir() { DIR=${1:-${TMPDIR:-/tmp}/settle-galera}; }

find_provider() {
  local p
  for p in /usr/lib/galera/libgalera_smm.so /usr/lib/libgalera_smm.so \
           /usr/lib/galera-4/libgalera_smm.so /usr/lib64/galera-4/libgalera_smm.so \
           /usr/lib/x86_64-linux-gnu/galera/libgalera_smm.so; do
    if [ -e "$p" ]; then echo "$p"; return 0; fi
  done
  dpkg -L galera-4 2>/dev/null | grep -m1 'libgalera_smm\.so$'
}

install_missing() {
  local pkgs=()
  [ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null || pkgs+=(mariadb-server)
  command -v mariadb-install-db >/dev/null || pkgs+=(mariadb-server)
  command -v mysql >/dev/null && command -v mysqladmin >/dev/null || pkgs+=(mariadb-client)
  find_provider >/dev/null || pkgs+=(galera-4)
  command -v rsync >/dev/null || pkgs+=(rsync) # the SST method
  if [ "${#pkgs[@]}" -gt 0 ]; then
    read -r -a pkgs <<<"$(printf '%s\n' "${pkgs[@]}" | sort -u | tr '\n' ' ')"
    apt_install "${pkgs[@]}"
  fi
  PROVIDER=$(find_provider) || { log "libgalera_smm.so not found"; return 1; }
  MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
}

# As root the nodes run as mysql: the rsync SST joiner starts an rsync daemon, which, when
# run by root, drops to user nobody and then cannot write into a root-owned data directory
# ("recv_generator: mkdir ... Permission denied", SST fails, the joiner aborts).
node_user() {
  if [ "$(id -u)" = 0 ] && id mysql >/dev/null 2>&1; then echo mysql; else id -un; fi
}

gcomm_address() {
  echo "gcomm://127.0.0.1:$((GCOMM_BASE + 1)),127.0.0.1:$((GCOMM_BASE + 2)),127.0.0.1:$((GCOMM_BASE + 3))"
}

write_config() { # node number
  local i=$1 d=$DIR/node$1
  cat >"$d/my.cnf" <<EOF
[mysqld]
user=$(node_user)
datadir=$d/data
socket=$d/sock
pid-file=$d/pid
log-error=$d/error.log
port=${PORTS[$((i - 1))]}
bind-address=127.0.0.1
skip-name-resolve
innodb_buffer_pool_size=128M
max_connections=500
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider=$PROVIDER
wsrep_cluster_name=settle-galera
wsrep_cluster_address=$(gcomm_address)
wsrep_node_name=node$i
wsrep_node_address=127.0.0.1:$((GCOMM_BASE + i))
wsrep_node_incoming_address=127.0.0.1:${PORTS[$((i - 1))]}
wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:$((GCOMM_BASE + i));ist.recv_addr=127.0.0.1:$((IST_BASE + i))${EVS_OPTIONS:+;$EVS_OPTIONS}"
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:$((SST_BASE + i))
EOF
}

sql() { # port, statement
  timeout 10 mysql --connect-timeout=3 --protocol=tcp -h127.0.0.1 -P"$1" -uroot -N -B -e "$2"
}

wsrep_status() { # port, variable
  sql "$1" "SHOW GLOBAL STATUS LIKE '$2'" 2>/dev/null | cut -f2
}

pid_of() { # node; the pid of its mariadbd when it runs
  local f=$DIR/node$1/server.pid p
  [ -s "$f" ] || return 1
  p=$(cat "$f")
  kill -0 "$p" 2>/dev/null && grep -q "$DIR/node$1/my.cnf" "/proc/$p/cmdline" 2>/dev/null \
    && echo "$p"
}

running() { pid_of "$1" >/dev/null; }

synced() { # port
  [ "$(wsrep_status "$1" wsrep_local_state_comment)" = Synced ] \
    && [ "$(wsrep_status "$1" wsrep_cluster_status)" = Primary ]
}

cluster_of_three() { [ "$(wsrep_status "$1" wsrep_cluster_size)" = 3 ]; }

seqno_of() { sed -n 's/^seqno:[[:space:]]*//p' "$DIR/node$1/data/grastate.dat" 2>/dev/null; }

# A node that crashed has seqno -1 in grastate.dat; recover its position from InnoDB
# (mariadbd --wsrep-recover, what galera_recovery does for systemd) and start it with
# --wsrep-start-position, so that it rejoins with IST rather than a full SST.
declare -A POS=()
recover_position() { # node; sets POS[node] to uuid:seqno when it has to be recovered
  local i=$1 d=$DIR/node$1 pos
  [ -f "$d/data/grastate.dat" ] && [ "$(seqno_of "$i")" = -1 ] || return 0
  rm -f "$d/recover.log"
  "$MARIADBD" --defaults-file="$d/my.cnf" --wsrep-recover --log-error="$d/recover.log" \
    >/dev/null 2>&1 || true
  pos=$(sed -n 's/.*WSREP: Recovered position: //p' "$d/recover.log" 2>/dev/null | tail -n1)
  if [ -n "$pos" ]; then log "node$i: recovered position $pos"; POS[$i]=$pos; fi
}

start_position() { # node; the mariadbd argument for a recovered position, if any
  if [ -n "${POS[$1]:-}" ]; then echo "--wsrep-start-position=${POS[$1]}"; fi
}

launch() { # node, extra mariadbd arguments...
  local i=$1 d=$DIR/node$1; shift
  "$MARIADBD" --defaults-file="$d/my.cnf" "$@" </dev/null >>"$d/stdout.log" 2>&1 &
  # mariadbd writes its pid file only once it has its data (after an SST); write it now.
  echo $! >"$d/server.pid"
  disown || true
}

init_node() { # node
  local i=$1 d=$DIR/node$1
  mkdir -p "$d/data"
  write_config "$i"
  if [ "$(node_user)" != "$(id -un)" ]; then chown -R "$(node_user)": "$d"; fi
  if [ "$i" = 1 ] && [ ! -d "$d/data/mysql" ]; then
    log "node1: mariadb-install-db"
    mariadb-install-db --defaults-file="$d/my.cnf" --auth-root-authentication-method=normal \
      --skip-test-db >"$d/install.log" 2>&1 || { cat "$d/install.log" >&2; return 1; }
  fi
}

# The node to bootstrap a stopped cluster from: the one marked safe_to_bootstrap (the last
# to stop cleanly), else the one with the highest (recovered) seqno, marked safe; node 1 for
# a new cluster.
bootstrap_node() {
  local i best=1 best_seqno=-2 s
  for i in 1 2 3; do
    if grep -q '^safe_to_bootstrap: 1' "$DIR/node$i/data/grastate.dat" 2>/dev/null; then
      echo "$i"; return 0
    fi
  done
  for i in 1 2 3; do
    s=${POS[$i]:-}; s=${s##*:}; [ -n "$s" ] || s=$(seqno_of "$i"); s=${s:--2}
    if [ "$s" -gt "$best_seqno" ]; then best=$i best_seqno=$s; fi
  done
  if [ -f "$DIR/node$best/data/grastate.dat" ]; then
    sed -i 's/^safe_to_bootstrap: 0/safe_to_bootstrap: 1/' "$DIR/node$best/data/grastate.dat"
  fi
  echo "$best"
}

start() {
  set_dir "${1:-}"
  install_missing
  mkdir -p "$DIR"
  local i first=
  for i in 1 2 3; do init_node "$i"; done
  for i in 1 2 3; do
    if running "$i"; then first=${first:-$i}; else recover_position "$i"; fi
  done
  if [ -z "$first" ]; then
    first=$(bootstrap_node)
    log "node$first: bootstrapping the cluster (--wsrep-new-cluster)"
    # shellcheck disable=SC2046
    launch "$first" --wsrep-new-cluster $(start_position "$first")
    wait_for "node$first (Synced)" 60 synced "${PORTS[$((first - 1))]}" \
      || { tail -n 30 "$DIR/node$first/error.log" >&2; return 1; }
  fi
  for i in 1 2 3; do
    running "$i" && continue
    log "node$i: joining"
    # shellcheck disable=SC2046
    launch "$i" $(start_position "$i")
    # One at a time: a first join is a full SST (rsync), which makes the donor Donor/Desynced.
    wait_for "node$i (Synced)" 120 synced "${PORTS[$((i - 1))]}" \
      || { tail -n 30 "$DIR/node$i/error.log" >&2; return 1; }
  done
  for i in 1 2 3; do
    wait_for "node$i (cluster of 3)" 60 cluster_of_three "${PORTS[$((i - 1))]}"
    wait_for "node$i (Synced)" 60 synced "${PORTS[$((i - 1))]}"
  done
  echo "export SETTLE_TEST_GALERA_URLS=mysql://root@127.0.0.1:${PORTS[0]},mysql://root@127.0.0.1:${PORTS[1]},mysql://root@127.0.0.1:${PORTS[2]}"
  log "cluster of 3 Synced on 127.0.0.1:${PORTS[0]},${PORTS[1]},${PORTS[2]} (data in $DIR)"
}

stop() {
  set_dir "${1:-}"
  local i pid
  # Node 1 last, so that it is the one marked safe_to_bootstrap for the next start.
  for i in 3 2 1; do
    pid=$(pid_of "$i") || continue
    kill -CONT "$pid" 2>/dev/null || true
    log "node$i: stopping (pid $pid)"
    mysqladmin --protocol=socket -S"$DIR/node$i/sock" -uroot shutdown >/dev/null 2>&1 \
      || mysqladmin --protocol=tcp -h127.0.0.1 -P"${PORTS[$((i - 1))]}" -uroot shutdown \
        >/dev/null 2>&1 || true
    if ! wait_for "node$i stop" 30 sh -c "! kill -0 $pid"; then
      log "node$i: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true
      wait_for "node$i stop" 10 sh -c "! kill -0 $pid" || true
    fi
  done
}

status() {
  local i p out
  for i in 1 2 3; do
    p=${PORTS[$((i - 1))]}
    if out=$(sql "$p" "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_size',
        'wsrep_local_state_comment','wsrep_cluster_status','wsrep_ready')" 2>&1); then
      echo "node$i 127.0.0.1:$p $(echo "$out" | awk '{printf "%s=%s ", $1, $2}')"
    else
      echo "node$i 127.0.0.1:$p down"
    fi
  done
}

case "${1:-start}" in
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  status) status ;;
  *) echo "usage: $0 start [DIR] | stop [DIR] | status" >&2; exit 2 ;;
esac
