#!/usr/bin/env bash
# API boundary benchmark (issue 13): signed queries through `icos boundary` against nginx as
# a reverse proxy (keep-alive upstream) to the same replica, measured with wrk in alternating
# rounds; prints each run and the median ratios (throughput, p99).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release -q -p icos-cli
exec "${CARGO_TARGET_DIR:-target}/release/icos" bench boundary --rounds "${ROUNDS:-3}" --secs "${SECS:-10}"
