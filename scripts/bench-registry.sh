#!/usr/bin/env bash
# Registry benchmarks: full sync and verification of 10,000 versions, incremental sync of
# one version, and server throughput under 64 concurrent clients next to nginx serving the
# same changes as static files.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release -q -p icos-cli
exec "${CARGO_TARGET_DIR:-target}/release/icos" bench registry --versions "${VERSIONS:-10000}"
