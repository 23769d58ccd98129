#!/usr/bin/env bash
# Before/after ratio of each optimisation, measured in one run: for every workload, the default
# optimised paths alternate with `recsys bench --disable X` (X switched off alone, the rest on)
# and with `--plain` (every optimisation off), REPS times; medians of the per-rep ratios
# optimised / without. CPU-time ratios alongside (less disturbed by other processes).
#
#   scripts/bench_paths.sh                    # REPS=3 STEPS=20, 2 threads
#   REPS=5 WORKLOADS=dien scripts/bench_paths.sh
#   OMP_WAIT_POLICY=PASSIVE scripts/bench_paths.sh   # fix the policy for every run
#   ONLY=parallel_branches WORKLOADS=twotower_ssl REPS=8 scripts/bench_paths.sh  # chosen ones
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
REPS=${REPS:-3}
STEPS=${STEPS:-20}
WORKLOADS=${WORKLOADS:-twotower_ssl,din,dien}
BIN=${BIN:-build/recsys}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
[ -x "$BIN" ] || { echo "missing $BIN: build first (ninja -C build recsys)" >&2; exit 2; }

declare -A OPTS=(
  [twotower_ssl]="optimizer cross_entropy item_tower_batch small_vocab_projection allocator gemm softmax_fused sparse_lookup distinct_bags tower_mlp huge_pages distinct_items parallel_branches"
  [din]="optimizer first_layer packing dice allocator gemm attention_tail huge_pages"
  [dien]="optimizer packing gru_packed gru_fused dice aux_fused gru_threads allocator gemm"
)
run() {  # workload, label, extra args...
  local w=$1 label=$2; shift 2
  "$BIN" bench --json --threads "$THREADS" --steps "$STEPS" --workloads "$w" "$@" \
    | sed "s/^/{\"rep\": $rep, \"label\": \"$label\", \"r\": /; s/\$/}/" >> "$OUT/all.jsonl" || true
}
echo "# $(date -Is) threads=$THREADS reps=$REPS steps=$STEPS" >&2
for rep in $(seq 1 "$REPS"); do
  for w in ${WORKLOADS//,/ }; do
    echo "# rep $rep: $w" >&2
    for o in ${ONLY:-${OPTS[$w]} plain}; do
      run "$w" optimised
      if [ "$o" = plain ]; then run "$w" plain --plain; else run "$w" "$o" --disable "$o"; fi
    done
  done
done
/usr/bin/python3 - "$OUT/all.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# Pair each "without" run with the optimised run made just before it.
pairs, last = {}, {}
for x in rows:
    r = x["r"]
    if "examples_per_s" not in r:
        print("error:", r, file=sys.stderr)
        continue
    w = r["workload"]
    if x["label"] == "optimised":
        last[w] = r
    elif w in last:
        pairs.setdefault((w, x["label"]), []).append((last[w], r))
med = statistics.median
print(f"{'workload':<13} {'without':<17} {'ex/s without':>12} {'ex/s optimised':>14} {'speed-up':>9} {'cpu speed-up':>12}  per rep")
for (w, label), ps in pairs.items():
    sp = [a["examples_per_s"] / b["examples_per_s"] for a, b in ps]
    cpu = [b["cpu_ms_per_step"] / a["cpu_ms_per_step"] for a, b in ps]
    print(f"{w:<13} {label:<17} {med([b['examples_per_s'] for _, b in ps]):>12.0f} "
          f"{med([a['examples_per_s'] for a, _ in ps]):>14.0f} {med(sp):>9.2f} {med(cpu):>12.2f}  "
          + " ".join(f"{v:.2f}" for v in sp))
PY
