#!/usr/bin/env bash
# The chat example, ready to try: a broker on a temporary database with two
# demo users in one tenant (alice, bob) and one in another (carol), all with
# the password "demo", and the page served from a second port (so CORS is
# real). Open the printed URL in two windows, log in as alice and as bob,
# and chat. Ctrl-C stops both.
#   scripts/example.sh [broker port] [page port]
set -euo pipefail
cd "$(dirname "$0")/.."
broker_port=${1:-8080}
page_port=${2:-8081}
if [ ! -f examples/chat/dist/app.js ]; then
  (cd examples/chat && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
fi
cargo build --release --quiet
dir=$(mktemp -d)
origin="http://127.0.0.1:$page_port"
target/release/broker --db="$dir/db" --port="$broker_port" --origin="$origin" \
  --admin_token=demo-admin --jwt_secret="$(head -c 24 /dev/urandom | base64)" 2>"$dir/broker.log" &
broker=$!
python3 -m http.server "$page_port" --bind 127.0.0.1 --directory examples/chat >/dev/null 2>&1 &
page=$!
trap 'kill $broker $page 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$broker_port/" >/dev/null && break; sleep 0.05; done
for user in alice:team bob:team carol:other; do
  curl -sf -X POST "http://127.0.0.1:$broker_port/create_user" \
    -d "{\"admin_token\":\"demo-admin\",\"username\":\"${user%%:*}\",\"password\":\"demo\",\"tenant_name\":\"${user##*:}\"}" >/dev/null
done
echo "Broker on port $broker_port (log: $dir/broker.log); users alice, bob (tenant team) and carol (tenant other), password demo."
echo "Open $origin/?broker=http://127.0.0.1:$broker_port in two windows. Ctrl-C to stop."
wait $broker
