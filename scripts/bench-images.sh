#!/usr/bin/env bash
# Image benchmarks: cold and warm build time per image, image and update-package sizes,
# and GuestOS/HostOS boot time to SUCCESS next to the same kernel with a one-line init.
# Prints a Markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release -q -p icos-cli
ICOS="$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/icos"
export ICOS_PLAIN_PROGRESS=1
WORK="${BENCH_DIR:-$(mktemp -d /var/tmp/icos-bench.XXXXXX)}"
RUNS="${BOOT_RUNS:-3}"
V=1.0.0
echo "work dir: $WORK" >&2

secs() { # run a command, print elapsed seconds
  local s e
  s=$(date +%s.%N); "$@" >/dev/null 2>"$WORK/last.err" || { cat "$WORK/last.err" >&2; return 1; }
  e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN { printf "%.1f", e - s }'
}

declare -A COLD WARM
for img in guestos hostos setupos; do
  extra=()
  if [ "$img" = setupos ]; then extra=(--hostos "$WORK/warm/hostos" --guestos "$WORK/warm/guestos"); fi
  cache="$WORK/cache-$img"; rm -rf "$cache"
  echo "cold build $img (empty Debian base cache)" >&2
  COLD[$img]=$(ICOS_CACHE="$cache" secs "$ICOS" build $img --version $V --out "$WORK/cold/$img" "${extra[@]}")
  echo "warm build $img (cached base)" >&2
  WARM[$img]=$(ICOS_CACHE="$cache" secs "$ICOS" build $img --version $V --out "$WORK/warm/$img" "${extra[@]}")
  rm -rf "$cache" "$WORK/cold/$img"
done

echo
echo "| image | cold build (s) | warm build (s) | disk.img logical (MiB) | disk.img allocated (MiB) | update package (MiB) |"
echo "|---|---|---|---|---|---|"
for img in guestos hostos setupos; do
  d="$WORK/warm/$img/disk.img"
  logical=$(( $(stat -c %s "$d") >> 20 ))
  alloc=$(( $(du -B1 "$d" | cut -f1) >> 20 ))
  if [ -f "$WORK/warm/$img/update.tar" ]; then pkg=$(( $(stat -c %s "$WORK/warm/$img/update.tar") >> 20 )); else pkg="-"; fi
  printf '| %s | %.1f | %.1f | %s | %s | %s |\n' "$img" "${COLD[$img]}" "${WARM[$img]}" "$logical" "$alloc" "$pkg"
done
echo
for img in guestos hostos; do
  "$ICOS" bench boot "$WORK/warm/$img" --runs "$RUNS"
done
[ -n "${BENCH_DIR:-}" ] || rm -rf "$WORK"
