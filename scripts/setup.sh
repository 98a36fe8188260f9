#!/usr/bin/env bash
# Installs every host package icos needs to build and boot images. Idempotent:
# a second run with everything present does no network access.
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Packages from bookworm (stable). Each one is used by the image builder or the VM runner.
STABLE_PKGS=(
  ovmf               # UEFI firmware for QEMU
  debootstrap        # base root filesystem from Debian packages
  erofs-utils        # mkfs.erofs for read-only roots
  mtools             # tests: edit a SetupOS CONFIG partition by hand, as an operator would
  dosfstools         # tests: fsck.fat checks the FAT partitions icos writes
  cryptsetup-bin     # veritysetup
  gdisk              # sgdisk for GPT layouts
  systemd-boot-efi   # the systemd-boot EFI binary
  e2fsprogs          # mkfs.ext4
  zstd
  busybox-static     # one-line init for the boot-time baseline benchmark
  cpio               # pack the baseline initramfs; reads ours back in a unit test
  libc6-dev          # static glibc for the initramfs's icos-init
  nginx-light        # baseline static server for the registry benchmark
  wrk                # HTTP load generator for benchmarks
  curl               # the main job shows a raw HTTP exchange with the boundary
  clang              # the C example canisters, built for wasm32 (crates/example-canisters)
  lld                # wasm-ld, clang's linker for wasm32
  chromium           # tests: a real browser opens a canister's page through the gateway
  libnss3-tools      # tests: certutil puts the local network's CA in that browser's trust store
)
# Node.js runs the @dfinity/agent test; this machine kind ships it (NodeSource), Debian's
# own is the fallback.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  STABLE_PKGS+=(nodejs npm)
fi
# QEMU must come from backports: the preinstalled qemu-utils is from there and the
# bookworm qemu-system conflicts with it.
BACKPORTS_PKGS=(qemu-system-x86)

missing=()
for p in "${STABLE_PKGS[@]}" "${BACKPORTS_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# The JavaScript agent the tests use, exactly as locked; again only when the lockfile changed.
npm_packages() {
  local dir stamp want
  dir="$(dirname "$0")/../js/agent-test"
  stamp="$dir/node_modules/.icos-lock-sha256"
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "npm ci in js/agent-test (@dfinity/agent, as locked)"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
    echo "$want" >"$stamp"
  fi
}

if [ ${#missing[@]} -eq 0 ]; then
  log "all host packages present"
  npm_packages
  exit 0
fi
log "missing packages: ${missing[*]}"

if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding the bookworm-backports apt source"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    | $SUDO tee /etc/apt/sources.list.d/icos-backports.sources >/dev/null
fi

# Packages like nginx start their service on install; icos only runs them on demand
# (benchmarks), so keep daemons from starting during the install (Debian's policy-rc.d).
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod +x "$POLICY"
  ADDED_POLICY=1
fi
trap 'if [ "$ADDED_POLICY" = 1 ]; then $SUDO rm -f "$POLICY"; fi' EXIT

log "apt-get update"
$SUDO apt-get update -q -o Dpkg::Progress-Fancy=0
export DEBIAN_FRONTEND=noninteractive
log "installing stable packages"
$SUDO apt-get install -y -q --no-install-recommends "${STABLE_PKGS[@]}"
log "installing QEMU from bookworm-backports"
$SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports "${BACKPORTS_PKGS[@]}"
npm_packages
log "done"
