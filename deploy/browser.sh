#!/usr/bin/env bash
# Installs Debian's Chromium and its ChromeDriver when missing (the admin UI's browser test
# drives them) and prints `export SETTLE_CHROMIUM=... SETTLE_CHROMEDRIVER=...`.
set -euo pipefail
log() { echo "[browser] $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

chromium=${SETTLE_CHROMIUM:-/usr/bin/chromium}
driver=${SETTLE_CHROMEDRIVER:-/usr/bin/chromedriver}
if [ ! -x "$chromium" ] || [ ! -x "$driver" ]; then
  log "installing chromium and chromium-driver (apt-get)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2
fi
"$driver" --version >&2
echo "export SETTLE_CHROMIUM=$chromium SETTLE_CHROMEDRIVER=$driver"
