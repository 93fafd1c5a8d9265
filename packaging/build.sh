#!/usr/bin/env bash
# Builds the .deb and the .rpm: release binary, man pages and completions generated from the
# clap definitions, then cargo-deb and cargo-generate-rpm (installed with `cargo install` when
# missing). The packages land in target/debian/ and target/generate-rpm/.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
for tool in cargo-deb cargo-generate-rpm; do
  command -v "$tool" >/dev/null 2>&1 || cargo install --locked --quiet "$tool"
done
cargo build --release --locked --quiet
rm -rf target/assets
target/release/acme-nginx assets --out target/assets
gzip -9n target/assets/man/*.1
cargo deb --no-build --quiet
cargo generate-rpm
ls target/debian/*.deb target/generate-rpm/*.rpm
