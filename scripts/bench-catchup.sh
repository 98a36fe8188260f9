#!/usr/bin/env bash
# Catch-up benchmark (issue 14): a node of a three-node subnet, down while a canister grew
# to MIB (default 1 GiB) and the log was purged behind snapshots, takes up the state from
# its members; against `cp -r` + `sync` of the same state folder, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release -q -p icos-cli
# Node 3 is down on purpose for most of the run: the leader's retries are not news.
exec "${CARGO_TARGET_DIR:-target}/release/icos" --log info,openraft=off bench catch-up --mib "${MIB:-1024}"
