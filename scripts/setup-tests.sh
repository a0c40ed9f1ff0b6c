#!/usr/bin/env bash
# Installs what the tests need beyond Rust, idempotently:
# - Node.js and npm (Debian's) if missing, then broker-client@0.0.8 and esbuild
#   from npm, bundling tests/client/client.mjs for Node 20;
# - Debian's pebble (Let's Encrypt's test ACME server) for the ACME test;
# - Debian's Chromium and, from npm, playwright-core (which downloads no
#   browser of its own) for the browser test of examples/chat, whose page is
#   bundled with esbuild, and for tests/tabs (ten tabs of one profile), which
#   uses examples/chat's playwright-core;
# - iproute2, e2fsprogs and util-linux for the fault tests (IPv6 addresses on
#   lo, a loop-mounted ext4 frozen with fsfreeze); curl for the backup test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v pebble >/dev/null 2>&1 || need_apt+=(pebble)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# The fault tests: IPv6 addresses on lo, a frozen loop-mounted ext4.
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v mkfs.ext4 >/dev/null 2>&1 || need_apt+=(e2fsprogs)
command -v fsfreeze >/dev/null 2>&1 || need_apt+=(util-linux)
# Emoji in the browser test's screenshots.
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need_apt+=(fonts-noto-color-emoji)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

for dir in tests/client examples/chat; do
  (
    cd "$dir"
    if [ ! -d node_modules/broker-client ] || [ ! -d node_modules/esbuild ]; then
      npm ci --no-audit --no-fund --loglevel=error
    fi
    npm run --silent build
  )
done
