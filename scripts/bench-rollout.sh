#!/usr/bin/env bash
# Rollout benchmark: time from adoption of a deploy proposal until every node confirmed the
# new GuestOS, on testnets of 2 and 4 nodes, next to one plain reboot of a node VM measured
# in the same run. Takes about 15 minutes here (TCG).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release -q -p icos-cli
exec "${CARGO_TARGET_DIR:-target}/release/icos" bench rollout --images "${ICOS_IMAGES:-out/testnet/images}" --nodes 2 --nodes 4
