#!/usr/bin/env bash
# The whole test suite: unit tests, bad-input tests, and the system tests that build real
# images and boot them in QEMU. Ends with the test runner's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "[test] installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "[test] documentation examples (cargo test --doc)"
cargo test --workspace --doc -q
echo "[test] cargo nextest run --workspace"
cargo nextest run --workspace --no-fail-fast
