#!/usr/bin/env bash
# Upgrade-engine install throughput: a 1 GiB package into a disk image, against sha256sum
# followed by dd of the same file to the same target, in the same run. Prints the ratio and
# the engine's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release -q -p icos-cli
exec "${CARGO_TARGET_DIR:-target}/release/icos" bench install --mib "${MIB:-1024}" --runs "${RUNS:-3}"
