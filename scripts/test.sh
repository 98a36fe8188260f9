#!/usr/bin/env bash
# The whole test suite: formatting and lints, unused dependencies, unit tests, bad-input
# tests, and the system tests that build real images and boot them in QEMU. Ends with the
# test runner's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

for tool in cargo-nextest cargo-machete; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "[test] installing $tool"
    cargo install --locked "$tool"
  fi
done

echo "[test] cargo fmt --check"
cargo fmt --all --check
echo "[test] cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -q -- -D warnings
echo "[test] cargo machete (unused dependencies)"
cargo machete
echo "[test] documentation examples (cargo test --doc)"
cargo test --workspace --doc -q
echo "[test] cargo nextest run --workspace"
cargo nextest run --workspace --no-fail-fast
