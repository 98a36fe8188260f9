#!/usr/bin/env bash
# The main job: install what is needed, build the icos tool, build the GuestOS image and
# boot it in QEMU until it reports GUESTOS BOOT SUCCESS.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "host packages"
./scripts/setup.sh

step "building the icos tool (cargo build --release)"
cargo build --release -q -p icos-cli
ICOS=target/release/icos

VERSION="${ICOS_VERSION:-1.0.0}"
OUT="out/guestos-$VERSION"
step "building GuestOS $VERSION into $OUT (the first build fetches the Debian base: about a minute)"
"$ICOS" build guestos --version "$VERSION" --out "$OUT"

step "booting $OUT/disk.img in QEMU until GUESTOS BOOT SUCCESS (TCG here: about 15 s; serial log in $OUT/serial.log)"
"$ICOS" vm run "$OUT/disk.img" --snapshot --serial-log "$OUT/serial.log" --timeout 300 \
  --until 'GUESTOS BOOT (SUCCESS|FAILURE)'
grep -a -m1 'GUESTOS BOOT' "$OUT/serial.log"
grep -a -q 'GUESTOS BOOT SUCCESS' "$OUT/serial.log"
