#!/usr/bin/env bash
# The Rust RocketMQ name server and broker (rocketmq-rust, from crates.io), on 127.0.0.1.
#
#   deploy/rocketmq.sh install   cargo install the pinned versions when missing (a cold
#                                install takes about 25 minutes on 2 cores; the binaries
#                                land in cargo's bin folder and are reused)
#   deploy/rocketmq.sh start     install if needed, then start both (name server on 9876,
#                                broker on 10911) unless they already answer; prints
#                                `export SETTLE_TEST_ROCKETMQ=127.0.0.1:9876`
#   deploy/rocketmq.sh stop      stop both (SIGTERM)
#   deploy/rocketmq.sh restart-broker   crash (SIGKILL) and start the broker (for fault tests)
#   deploy/rocketmq.sh stop-broker / start-broker   crash, or start, the broker alone
#
# The fault commands kill the broker rather than stop it: rocketmq-broker 1.0.0, stopped
# gracefully while it is being written to, was seen to keep a message it had stored before
# the stop out of its consume queue after the restart (consumers never saw it); after a
# crash it recovers its consume queues from the commit log.
#   deploy/rocketmq.sh status    say what answers
#
# State (config with paths filled in, store, logs, pids) lives in SETTLE_ROCKETMQ_HOME,
# default ~/.cache/settle/rocketmq. Config templates are in deploy/rocketmq/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
VERSION=1.0.0
HOME_DIR=${SETTLE_ROCKETMQ_HOME:-$HOME/.cache/settle/rocketmq}
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
NAMESRV=$CARGO_BIN/rocketmq-namesrv-rust
BROKER=$CARGO_BIN/rocketmq-broker-rust
export ROCKETMQ_HOME=$HOME_DIR
export ROCKETMQ_SECURITY_PROFILE=development-insecure-loopback

log() { echo "[rocketmq] $*" >&2; }

installed() {
  [ -x "$NAMESRV" ] && [ -x "$BROKER" ] || return 1
  local list; list=$(cargo install --list 2>/dev/null)
  grep -q "^rocketmq-namesrv v$VERSION:" <<<"$list" && grep -q "^rocketmq-broker v$VERSION:" <<<"$list"
}

install() {
  if installed; then return 0; fi
  log "installing rocketmq-namesrv and rocketmq-broker $VERSION (cargo install; about 25 minutes cold)"
  cargo install --locked "rocketmq-namesrv@$VERSION" "rocketmq-broker@$VERSION" >&2
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port, seconds
  for _ in $(seq 1 $(($2 * 10))); do
    if port_open "$1"; then return 0; fi
    sleep 0.1
  done
  log "nothing answers on 127.0.0.1:$1 after $2s; see $HOME_DIR/logs"; return 1
}

render() { # template, output
  sed "s|@HOME@|$HOME_DIR|g" "$here/rocketmq/$1" >"$HOME_DIR/$2"
}

start_namesrv() {
  if port_open 9876; then return 0; fi
  log "starting the name server"
  render namesrv.toml namesrv.toml
  nohup "$NAMESRV" -c "$HOME_DIR/namesrv.toml" --bindAddress 127.0.0.1 \
    >"$HOME_DIR/logs/namesrv.log" 2>&1 &
  echo $! >"$HOME_DIR/namesrv.pid"
  wait_port 9876 60
}

start_broker() {
  if port_open 10911; then return 0; fi
  log "starting the broker"
  render broker.toml broker.toml
  nohup "$BROKER" -c "$HOME_DIR/broker.toml" -n 127.0.0.1:9876 \
    >>"$HOME_DIR/logs/broker.log" 2>&1 &
  echo $! >"$HOME_DIR/broker.pid"
  wait_port 10911 60
}

stop_one() { # name [signal]
  local pidfile="$HOME_DIR/$1.pid" signal=${2:-TERM}
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $1 (SIG$signal)"
    kill "-$signal" "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

start() {
  install
  mkdir -p "$HOME_DIR/logs" "$HOME_DIR/store"
  start_namesrv
  start_broker
  log "name server 127.0.0.1:9876, broker 127.0.0.1:10911"
  echo "export SETTLE_TEST_ROCKETMQ=127.0.0.1:9876"
}

case "${1:-start}" in
  install) install ;;
  start) start ;;
  stop) stop_one broker; stop_one namesrv ;;
  restart-broker) stop_one broker KILL; mkdir -p "$HOME_DIR/logs"; start_broker ;;
  stop-broker) stop_one broker KILL ;;
  start-broker) mkdir -p "$HOME_DIR/logs"; start_broker ;;
  status)
    port_open 9876 && echo "name server: up" || echo "name server: down"
    port_open 10911 && echo "broker: up" || echo "broker: down" ;;
  *) echo "usage: $0 install|start|stop|restart-broker|stop-broker|start-broker|status" >&2; exit 2 ;;
esac
