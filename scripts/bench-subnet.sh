#!/usr/bin/env bash
# Subnet benchmark (issue 14): update calls per second with p50/p99 through replicated
# subnets of 1, 3 and 4 nodes (each node as the GuestOS runs it: its own state folder, raft
# log, peer routes and interface on loopback) against the single-node replica without a log,
# in the same run, at 1 and 16 clients.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release -q -p icos-cli
exec "${CARGO_TARGET_DIR:-target}/release/icos" bench subnet --requests "${REQUESTS:-500}"
