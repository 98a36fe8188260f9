#!/usr/bin/env bash
# The whole test suite: formatting and lints, unused dependencies, unit tests, bad-input
# tests, and the system tests that build real images and boot them in QEMU. Ends with the
# test runner's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says when it started, for finding where the run's time goes.
step() { echo "[test $(date -u +%H:%M:%S)] $*"; }

./scripts/setup.sh

for tool in cargo-nextest cargo-machete; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    step "installing $tool"
    cargo install --locked "$tool"
  fi
done

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -q -- -D warnings
step "cargo machete (unused dependencies)"
cargo machete
step "documentation examples (cargo test --doc)"
cargo test --workspace --doc -q
step "building the tests"
cargo nextest run --workspace --locked --no-run
# The images' release binaries and Debian bases are built here, once, into the image cache:
# built inside the VM tests they took 20 min on both cores while other tests' VMs starved.
step "the images' release binaries and Debian bases (kept in the image cache)"
target="${CARGO_TARGET_DIR:-target}"
warm="$target/warm-images"
rm -rf "$warm"
for kind in guestos hostos; do
  ICOS_PLAIN_PROGRESS=1 "$target/debug/icos" build "$kind" --version 1.0.0 --out "$warm/$kind"
done
ICOS_PLAIN_PROGRESS=1 "$target/debug/icos" build setupos --version 1.0.0 --out "$warm/setupos" \
  --hostos "$warm/hostos" --guestos "$warm/guestos"
rm -rf "$warm"
step "cargo nextest run --workspace"
cargo nextest run --workspace --locked --no-fail-fast
