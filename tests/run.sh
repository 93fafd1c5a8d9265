#!/usr/bin/env bash
# Runs every test: installs the test bed (nginx, pebble 2.10 from sid; needs root the first
# time), then the unit and integration tests against real pebble and nginx processes.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
tests/testbed/setup.sh
cargo test --all-targets "$@"
cargo test --doc "$@"
