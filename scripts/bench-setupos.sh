#!/usr/bin/env bash
# SetupOS install time against `zstd -d | dd` of the same images, in the same VM.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -q -p icos-cli
ICOS="${CARGO_TARGET_DIR:-target}/release/icos"
OUT="${ICOS_BENCH_OUT:-out/bench}"
for img in guestos hostos; do
  [ -f "$OUT/$img-1.0.0/manifest.json" ] || "$ICOS" build "$img" --version 1.0.0 --out "$OUT/$img-1.0.0"
done
"$ICOS" build setupos --version 1.0.0 --hostos "$OUT/hostos-1.0.0" --guestos "$OUT/guestos-1.0.0" --out "$OUT/setupos-1.0.0"
"$ICOS" bench setupos "$OUT/setupos-1.0.0"
