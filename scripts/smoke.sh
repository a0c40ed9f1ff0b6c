#!/usr/bin/env bash
# Smoke test of a built binary, as a user would try it on a fresh VPS: start
# it on a temporary database, then health, create_user, login, insert, and an
# SSE stream that must carry the inserted event. Usage: scripts/smoke.sh BINARY
set -euo pipefail
binary=${1:?usage: scripts/smoke.sh BINARY}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$binary" --port="$port" --db="$dir/db" --ntp_servers= --admin_token=smoke --jwt_secret=smoke 2>"$dir/log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
url="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$url/" >/dev/null && break; sleep 0.05; done
curl -sf "$url/" | grep -q ok
curl -sf -X POST "$url/create_user" -d '{"username":"smoke","password":"pw","admin_token":"smoke","tenant_name":"smoke"}' | grep -q '"id"'
jwt=$(curl -sf -X POST "$url/login" -d '{"username":"smoke","password":"pw"}' | sed -E 's/.*"jwt":"([^"]+)".*/\1/')
curl -sf -X POST "$url/insert" -H "Authorization: Bearer $jwt" -d '{"event":"hello","data":{"from":"smoke"}}' | grep -q '"id":1'
stream=$(timeout 2 curl -sN "$url/sse" -H "Authorization: Bearer $jwt" || true)
echo "$stream" | grep -q '^event:hello$'
echo "$stream" | grep -q '^data:{"from":"smoke"}$'
kill -TERM $pid && wait $pid
echo "smoke: $binary passed (health, create_user, login, insert, sse)"
