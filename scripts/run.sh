#!/usr/bin/env bash
# The main job: install what is needed, build the icos tool, and bring up a local icos
# network with its default settings (a registry under local governance, a package mirror,
# 2 nodes in one subnet and an API boundary node, each a HostOS agent supervising a GuestOS VM).
# The network keeps running; `target/release/icos testnet down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "host packages"
./scripts/setup.sh

step "building the icos tool (cargo build --release)"
cargo build --release -q -p icos-cli
ICOS="${CARGO_TARGET_DIR:-target}/release/icos"
DIR="${ICOS_TESTNET_DIR:-out/testnet}"

if [ -f "$DIR/testnet.json" ]; then
  step "stopping the testnet left in $DIR"
  "$ICOS" testnet down --dir "$DIR" || true
fi

step "icos testnet up (GuestOS 1.0.0 built on first use; 3 VMs under TCG here: about 8 minutes)"
"$ICOS" testnet up --dir "$DIR" --nodes "${ICOS_NODES:-2}"

if [ "${ICOS_SETUPOS:-1}" != 0 ]; then
  step "icos testnet install-node (SetupOS from a stick onto blank disks, then the installed HostOS; about 5 minutes, more the first time; ICOS_SETUPOS=0 skips it)"
  "$ICOS" testnet install-node --dir "$DIR"
fi

step "icos testnet status"
"$ICOS" testnet status --dir "$DIR"

step "each node's data partition (LUKS2, its key on the config partition), from its GuestOS console"
for log in "$DIR"/nodes/*/state/guest-serial.log; do
  node=$(basename "$(dirname "$(dirname "$log")")")
  grep -a -m1 -o "GUESTOS DATA.*" "$log" | sed "s/^/$node: /" || echo "$node: no data line yet"
done

step "each node's replica (its subnet's key delegated by the genesis root key), from its GuestOS console"
for log in "$DIR"/nodes/*/state/guest-serial.log; do
  node=$(basename "$(dirname "$(dirname "$log")")")
  grep -a -o "GUESTOS REPLICA.*" "$log" | tail -1 | sed "s/^/$node: /" || echo "$node: no replica line yet"
done

step "the API boundary node (node3, made one by governance): one URL for agents, routes from the verified registry"
grep -a -o "GUESTOS BOUNDARY.*" "$DIR"/nodes/*/state/guest-serial.log | tail -1 || true
BOUNDARY=$("$ICOS" testnet status --dir "$DIR" | sed -n 's/^boundary \(http[^:]*:[^:]*:[0-9]*\):.*/\1/p')
"$ICOS" testnet status --dir "$DIR" | grep '^boundary' || true
echo "what a client gets for a canister id no subnet holds (the cause is in x-ic-error-cause):"
curl -s -i -X POST "$BOUNDARY/api/v2/canister/aaaaa-aa/query" | grep -i -E '^HTTP|^x-ic-error-cause|^error|^details' || true

step "subnet-1 replicates: its two nodes order every call in one log (a counter made through the boundary, called through each node)"
STATUS=$("$ICOS" testnet status --dir "$DIR")
N1=$(echo "$STATUS" | grep '^node1 ' | grep -o 'replica http://[0-9.:]*' | cut -d' ' -f2 || true)
N2=$(echo "$STATUS" | grep '^node2 ' | grep -o 'replica http://[0-9.:]*' | cut -d' ' -f2 || true)
NET="$ICOS canister --identity $DIR/identity.pem"
SHARED=$($NET --url "$BOUNDARY" create)
echo "created canister $SHARED on subnet-1 through $BOUNDARY"
$NET --url "$BOUNDARY" install "$SHARED" canisters/counter.wat
echo "call inc through node1 ($N1): $($NET --url "$N1" call "$SHARED" inc)"
echo "call inc through node2 ($N2): $($NET --url "$N2" call "$SHARED" inc)"
sleep 1 # a node answers a call once it has applied it; the other may be a moment behind
echo "query get on node1: $($NET --url "$N1" query "$SHARED" get), on node2: $($NET --url "$N2" query "$SHARED" get)"

NEXT=1.1.0
if [ "${ICOS_UPGRADE:-1}" != 0 ]; then
  step "a rolling upgrade of subnet-1 to 1.1.0: built, elected and deployed by governance; each node fetches it at once and reboots into it only while the other serves (about 4 minutes; ICOS_UPGRADE=0 skips it)"
  if "$ICOS" testnet upgrade --dir "$DIR" --subnet subnet-1 --to 1.1.0; then
    NEXT=1.2.0
    grep -a -h -o "GUESTOS ORCHESTRATOR 1.1.0 installed; .*" "$DIR"/nodes/node[12]/state/guest-serial.log* || true
    echo "the counter after the rollout, through the boundary: $($NET --url "$BOUNDARY" query "$SHARED" get || echo 'no answer yet')"
  else
    echo "the rollout did not finish: see $ICOS testnet status --dir $DIR"
  fi
fi

step "a canister on a local replica (icos replica run: one node that is its own subnet)"
REPLICA_DIR="$DIR/replica"
if [ -f "$REPLICA_DIR.pid" ]; then kill "$(cat "$REPLICA_DIR.pid")" 2>/dev/null || true; fi
mkdir -p "$REPLICA_DIR"
"$ICOS" replica run --dir "$REPLICA_DIR" --listen 127.0.0.1:0 --gateway 127.0.0.1:0 >"$REPLICA_DIR.log" 2>&1 &
echo $! >"$REPLICA_DIR.pid"
for _ in $(seq 100); do grep -q "listening on" "$REPLICA_DIR.log" && break; sleep 0.1; done
cat "$REPLICA_DIR.log"
URL=$(sed -n 's/^replica: listening on \([^ ]*\).*/\1/p' "$REPLICA_DIR.log")
GATEWAY_PORT=$(sed -n 's/^replica: gateway on http:\/\/localhost:\([0-9]*\).*/\1/p' "$REPLICA_DIR.log")
CANISTER="$ICOS canister --url $URL --identity $DIR/identity.pem"
ID=$($CANISTER create)
echo "created canister $ID"
$CANISTER install "$ID" canisters/counter.wat
echo "call inc: $($CANISTER call "$ID" inc)"
echo "call inc: $($CANISTER call "$ID" inc)"
echo "query get: $($CANISTER query "$ID" get)"
$CANISTER status "$ID"

step "the asset canister: a certified page, checked as an HTTP gateway checks it"
$CANISTER examples "$DIR/canisters" >/dev/null
ASSETS=$($CANISTER create)
$CANISTER install "$ASSETS" "$DIR/canisters/assets.wasm"
$CANISTER http "$ASSETS" /
echo "the same page through the gateway, as a browser gets it:"
curl -s -i -H "Host: $ASSETS.localhost" "http://127.0.0.1:$GATEWAY_PORT/" | grep -i -E '^HTTP|^x-icos-verification|^content-type|<' || true
echo "a 3 MiB file: uploaded in pieces, streamed back in chunks, each checked as it passes:"
mkdir -p "$DIR/media"
head -c 3145728 /dev/urandom >"$DIR/media/large.bin"
$CANISTER upload "$ASSETS" "$DIR/media" --prefix /media
curl -s -D - -o "$DIR/large.back" -H "Host: $ASSETS.localhost" "http://127.0.0.1:$GATEWAY_PORT/media/large.bin" \
  | grep -i -E '^HTTP|^x-icos-verification|^transfer-encoding' || true
cmp -s "$DIR/media/large.bin" "$DIR/large.back" && echo "the same $(stat -c %s "$DIR/large.back") bytes came back"

cat <<MSG

Open in a browser:  http://$ASSETS.localhost:$GATEWAY_PORT/   (the asset canister's page, verified by the gateway)
Agents:             $URL (the local replica)   $BOUNDARY (the network, through its API boundary)

The network is running. Try:
  $ICOS testnet upgrade --dir $DIR --subnet subnet-1 --to $NEXT   # build, propose, vote, watch the rollout
  $ICOS testnet status --dir $DIR
  $ICOS testnet down --dir $DIR                                   # stop everything
  $ICOS canister --url $BOUNDARY ...     # agents: the network through its API boundary
  $CANISTER call $ID inc                 # the local replica ($URL)
  $CANISTER upload $ASSETS <dir>         # publish a site; then: $CANISTER http $ASSETS /
  kill \$(cat $REPLICA_DIR.pid)                                      # stop the local replica
MSG
