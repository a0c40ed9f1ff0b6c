#!/usr/bin/env bash
# Takes a consistent backup of a running Broker's database: a gzipped tar of
# the --db directory, restorable as it is (docs/operations.md, "Backup and
# restore").
#
#   scripts/backup.sh [OUTPUT]        default broker-backup-<UTC time>.tar.gz
#
#   BROKER_DB     the --db directory    (default /var/lib/broker/db)
#   BROKER_STOP   how to stop Broker    (default: systemctl stop broker)
#   BROKER_START  how to start it again (default: systemctl start broker)
#   BROKER_URL    if set, e.g. https://127.0.0.1/, waited for until it
#                 answers, so the downtime printed is until Broker serves
#
# fjall has no online checkpoint, so Broker is stopped for the moment it
# takes to take a snapshot, and started again at once: its table files never
# change once written, so the snapshot holds hard links to them (instant, no
# space), and copies of the few files fjall appends to or rewrites (the
# journal, at most 64 MiB, and small metadata). The archive is written from
# the snapshot afterwards, while Broker serves again. Downtime is the stop,
# that copy and the start; this script prints it. Clients see their streams
# end cleanly and resume with Last-Event-ID.
set -euo pipefail

db=${BROKER_DB:-/var/lib/broker/db}
out=${1:-broker-backup-$(date -u +%Y%m%dT%H%M%SZ).tar.gz}
stop=${BROKER_STOP:-systemctl stop broker}
start=${BROKER_START:-systemctl start broker}

[ -d "$db" ] || { echo "backup: no database at $db (set BROKER_DB)" >&2; exit 1; }
# Beside the database, so that hard links work (one filesystem).
snapshot=$(mktemp -d "$(dirname "$db")/.broker-backup.XXXXXX")
started=""
cleanup() {
  rm -rf "$snapshot"
  # Whatever failed, Broker does not stay stopped because of this script.
  if [ -n "$started" ] && [ "$started" = no ]; then eval "$start" || true; fi
}
trap cleanup EXIT

began=$EPOCHREALTIME
started=no
eval "$stop"
stopped=$EPOCHREALTIME
(cd "$db" && find . -type d) | (cd "$snapshot" && xargs mkdir -p)
(cd "$db" && find . -type f) | while IFS= read -r file; do
  case "$file" in
    */tables/*) ln "$db/$file" "$snapshot/$file" ;;
    *) cp -p "$db/$file" "$snapshot/$file" ;;
  esac
done
copied=$EPOCHREALTIME
eval "$start"
started=yes
if [ -n "${BROKER_URL:-}" ]; then
  for _ in $(seq 1 600); do
    curl -ksf -o /dev/null --max-time 1 "$BROKER_URL" && break
    sleep 0.05
  done
fi
ended=$EPOCHREALTIME
awk -v a="$began" -v b="$stopped" -v c="$copied" -v d="$ended" 'BEGIN {
  printf "backup: Broker was down %.2f s (stop %.2f s, snapshot %.2f s, start %.2f s)\n", d - a, b - a, c - b, d - c }' >&2

# The archive holds password hashes: readable by its owner alone (the umask
# only here, so that a BROKER_START that runs Broker itself does not inherit it).
(umask 077 && tar -C "$snapshot" -czf "$out.partial" .)
mv "$out.partial" "$out"
echo "backup: $out ($(du -h "$out" | cut -f1))" >&2
