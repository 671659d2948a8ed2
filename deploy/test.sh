#!/usr/bin/env bash
# Sets up everything Settle's tests need on this machine (MariaDB, Redis, RocketMQ, the
# Python DTM client, Chromium for the admin UI's test), then runs every test of the
# workspace, then the fail-point tests (a build with the `failpoints` feature). This is
# the README's test command.
# A first run installs the Rust RocketMQ broker with cargo install, which takes about 25
# minutes on 2 cores; later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(deploy/services.sh start)"
eval "$(deploy/python.sh)"
eval "$(deploy/rocketmq.sh start)"
eval "$(deploy/browser.sh)"
export SETTLE_TEST_MYSQL_URL SETTLE_TEST_REDIS_URL SETTLE_PYTHON SETTLE_TEST_ROCKETMQ
export SETTLE_CHROMIUM SETTLE_CHROMEDRIVER

echo "[test] MySQL: $SETTLE_TEST_MYSQL_URL  Redis: $SETTLE_TEST_REDIS_URL  RocketMQ: $SETTLE_TEST_ROCKETMQ  Python: $SETTLE_PYTHON" >&2
cargo test --workspace --locked "$@"
# The fail-point tests need the coordinator built with its fail points compiled in.
cargo test -p settle-tests --features failpoints --test failpoints --locked "$@"
