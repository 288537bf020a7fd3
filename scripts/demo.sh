#!/usr/bin/env bash
# The main job: set up, start a local test mesh of daemons, show it working, stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
NODES="${NODES:-3}"
MESH_DIR="$(mktemp -d -t swarm-mesh-XXXXXX)"
swarm() { .venv/bin/swarm-node "$@"; }
trap 'swarm mesh stop --dir "$MESH_DIR" >/dev/null 2>&1 || true; rm -rf "$MESH_DIR"' EXIT

echo "== starting a $NODES-node mesh in $MESH_DIR"
swarm mesh --nodes "$NODES" --dir "$MESH_DIR" --detach
echo
echo "== node-0: status"
swarm status --data-dir "$MESH_DIR/node-0"
echo
echo "== node-0: peers (every other node, connected, on our chain)"
swarm peers --data-dir "$MESH_DIR/node-0"
echo
echo "== node-0 sends 250 credits to node-2 through the consensus DAG"
swarm transfer --data-dir "$MESH_DIR/node-0" node-2 250
echo
echo "== balances as node-1 sees them (every node agrees)"
swarm balance --all --data-dir "$MESH_DIR/node-1"
echo
echo "== node-1: the DAG"
swarm dag status --data-dir "$MESH_DIR/node-1"
echo
echo "== the experts node-1 can reach: its own, and those its peers announce"
swarm experts --data-dir "$MESH_DIR/node-1"
echo
echo "== node-1 asks the mesh; the router picks mathematics, which node-0 serves for pay:"
echo "   node-1 opens a payment channel to node-0 on the DAG, then pays each call with an IOU"
swarm infer --data-dir "$MESH_DIR/node-1" "457+268="
echo
echo "== the same again: the channel is open, so no consensus round is on the call's path"
swarm infer --data-dir "$MESH_DIR/node-1" "600+199="
echo
echo "== and a coding question, answered by whoever serves coding"
swarm infer --data-dir "$MESH_DIR/node-0" "def add(a, b):" --max-tokens 40
echo
echo "== a new node joins the running mesh"
swarm mesh join --dir "$MESH_DIR"
echo
echo "== node-1: peers after the join"
swarm peers --data-dir "$MESH_DIR/node-1"
echo
echo "== node-1: the usage receipts node-0 sealed, and what node-1 measured of its providers"
swarm market receipts --data-dir "$MESH_DIR/node-1"
swarm market providers --data-dir "$MESH_DIR/node-1"
echo
echo "== node-0 settles what node-1 owes it through the DAG (it would on its own before expiry)"
swarm market settle --wait 30 --data-dir "$MESH_DIR/node-0"
swarm market channels --data-dir "$MESH_DIR/node-0"
echo
echo "== usage: tokens node-1 used, and tokens node-0 earned"
swarm usage --data-dir "$MESH_DIR/node-1"
swarm usage --data-dir "$MESH_DIR/node-0"
echo
echo "== balances of the mesh after the paid inference, as node-0 sees them"
swarm balance --all --data-dir "$MESH_DIR/node-0"
echo
echo "== stopping the mesh"
swarm mesh stop --dir "$MESH_DIR"
