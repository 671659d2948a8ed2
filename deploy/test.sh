#!/usr/bin/env bash
# Sets up everything Settle's tests need on this machine (MariaDB, Redis, the Python DTM
# client), then runs every test of the workspace. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(deploy/services.sh start)"
eval "$(deploy/python.sh)"
export SETTLE_TEST_MYSQL_URL SETTLE_TEST_REDIS_URL SETTLE_PYTHON

echo "[test] MySQL: $SETTLE_TEST_MYSQL_URL  Redis: $SETTLE_TEST_REDIS_URL  Python: $SETTLE_PYTHON" >&2
cargo test --workspace --locked "$@"
