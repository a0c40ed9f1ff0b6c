#!/usr/bin/env bash
# Builds a fully static x86_64 Linux binary of Broker — the drop-in binary for
# a tiny VPS: no libc to match, no shared library to install. Uses the musl
# target (rustup target add x86_64-unknown-linux-musl; Debian's musl-tools for
# the C parts of ring), falling back to glibc with crt-static if the musl
# target cannot be had. Checks that ldd sees no dynamic dependency and prints
# the size. The binary lands in target/static/broker.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/static
mkdir -p "$out"
if rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; then
  if ! command -v musl-gcc >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq musl-tools >/dev/null
  fi
  cargo build --release --quiet --target x86_64-unknown-linux-musl
  cp target/x86_64-unknown-linux-musl/release/broker "$out/broker"
  kind=musl
else
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --quiet --target x86_64-unknown-linux-gnu
  cp target/x86_64-unknown-linux-gnu/release/broker "$out/broker"
  kind="glibc crt-static"
fi
if ldd "$out/broker" 2>&1 | grep -q "=>"; then
  echo "build-static: $out/broker is dynamically linked:" >&2
  ldd "$out/broker" >&2
  exit 1
fi
size=$(stat -c %s "$out/broker")
echo "build-static: $out/broker ($kind) is static: $(ldd "$out/broker" 2>&1 | head -n 1 | sed 's/^[[:space:]]*//'); $((size / 1024)) KiB"
# 9 MB since HTTP/2 (issue 29; hyper's http2 and h2 add about 0.35 MB).
if [ "$size" -gt 9000000 ]; then
  echo "build-static: over the 9 MB target" >&2
fi
