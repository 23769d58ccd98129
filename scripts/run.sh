#!/usr/bin/env bash
# The main job: the SSL ablation sweep on the embedded synthetic corpus (no download needed).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/recsys ] || scripts/setup.sh
cmake --build build >/dev/null
out=${1:-runs/ssl_ablation_synthetic}
build/recsys sweep configs/sweeps/ssl_ablation_synthetic.json --out "$out"
echo
cat "$out/results.md"
