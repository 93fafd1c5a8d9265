#!/usr/bin/env bash
# Runs every test: installs the test bed (nginx, pebble 2.10 from sid; needs root the first
# time), then the unit and integration tests against real pebble and nginx processes, then
# checks that no process the tests started (nginx masters or workers, pebble, challtestsrv,
# named, pdns_server, etcd, acme-nginx) is still alive.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
tests/testbed/setup.sh

# The processes the tests may start: by command name (as ps shows it, 15 characters at most),
# and everything run as the worker user (nginx's workers, the attackers of the security tests).
started_by_tests() {
  ps -eo pid=,stat=,user=,comm= |
    awk '$2 !~ /^Z/ && ($4 ~ /^(nginx|pebble|pebble-challtes|acme-nginx|runuser|named|pdns_server|nsupdate|etcd|certbot|haproxy)$/ || $3 == "www-data") {print $1}' |
    sort
}
before=$(mktemp)
trap 'rm -f "$before"' EXIT
started_by_tests > "$before"

cargo test --all-targets "$@"
cargo test --doc "$@"
# The fleet benchmark (an ignored test: it prints figures and takes a while), with a shorter idle
# window than its default minute.
FLEET_BENCH_IDLE_SECS=10 cargo test --test integration fleet_bench -- --ignored --nocapture

sleep 0.5
left=$(comm -13 "$before" <(started_by_tests) || true)
if [ -n "$left" ]; then
  echo "error: processes started by the tests are still alive:" >&2
  # shellcheck disable=SC2086
  ps -o pid=,ppid=,user=,args= -p $(echo $left | tr ' ' ',') >&2 || true
  exit 1
fi
echo "no process started by the tests is left behind"
