#!/usr/bin/env bash
# Runs Broker's benchmark against a fresh release build and the static musl
# binary (scripts/build-static.sh): fan-out, a fixed insert rate, idle
# streams, inserts, start-up, Argon2 memory after logins, and up to 100 000
# streams (as many as the file limits allow), printing a JSON line per figure
# and a Markdown table, and redraws the chart in docs/bench.svg.
#   scripts/bench.sh               broker alone
#   scripts/bench.sh --with-nchan  also nginx + nchan on the same machine (installs
#                                  Debian's nginx-light and libnginx-mod-nchan)
# Extra arguments go to the benchmark (e.g. --only fanout,insert).
#   scripts/bench.sh --only idle-tls,idle-h2
#                                  idle streams over HTTPS/1.1 and HTTP/2, on
#                                  brokers serving TLS (not in the default run)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " == *" --with-nchan "* ]] && [ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nginx-light libnginx-mod-nchan >/dev/null
  # Debian starts the packaged nginx on port 80; the benchmark runs its own.
  systemctl stop nginx 2>/dev/null || service nginx stop 2>/dev/null || pkill -x nginx || true
fi
cargo build --release --quiet
# The static musl binary users deploy, measured beside the glibc build.
scripts/build-static.sh
cargo build --release --quiet --manifest-path bench/Cargo.toml
ulimit -n "$(ulimit -Hn)"
# Every run's JSON lines are kept in bench/results/; the chart in docs/ is
# redrawn from all the runs there (each bar the median, each dot a run).
mkdir -p bench/results
run="bench/results/run-$(date +%Y%m%d-%H%M%S).jsonl"
bench/target/release/broker-bench --broker target/release/broker --static target/static/broker "$@" | tee "$run"
python3 bench/chart.py bench/results/run-*.jsonl > docs/bench.svg
echo "results in $run; chart in docs/bench.svg"

