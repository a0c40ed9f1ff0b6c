#!/usr/bin/env bash
# Runs every test: installs the test prerequisites, then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-tests.sh
cargo test --all-targets "$@"
