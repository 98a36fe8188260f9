#!/usr/bin/env bash
# Replica benchmark (issue 12): queries and update calls per second with p50/p99 at 1 and 64
# concurrent clients, next to the same HTTP + CBOR stack answering without execution or
# certification; and one message through the runtime next to a direct wasmtime call.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release -q -p icos-cli
exec "${CARGO_TARGET_DIR:-target}/release/icos" bench replica --requests "${REQUESTS:-2000}"
