#!/usr/bin/env bash
# Makes a Python virtualenv with the DTM clients the compatibility tests run
# (tests/compat/requirements.txt) and prints `export SETTLE_PYTHON=...` for it.
# The virtualenv lives outside the clone (SETTLE_VENV, default ~/.cache/settle/venv) and is
# reused while its requirements are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SETTLE_VENV:-$HOME/.cache/settle/venv}
req=tests/compat/requirements.txt
log() { echo "[python] $*" >&2; }

if ! command -v python3 >/dev/null; then
  log "installing python3 (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip >&2
fi
stamp="$venv/.settle-requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$stamp"; then
  log "creating $venv"
  python3 -m venv "$venv" >&2 || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    python3 -m venv "$venv" >&2
  }
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  cp "$req" "$stamp"
fi
"$venv/bin/python" -c 'import dtmcli, pymysql, requests, kubernetes_validate' >&2
echo "export SETTLE_PYTHON=$venv/bin/python"
