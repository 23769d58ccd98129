#!/usr/bin/env bash
# Before/after ratios of the optimisations, measured in one run: `recsys bench --plain` (every
# workload's plain path: three item-tower passes, the concatenating DIN activation unit, the
# per-step reference GRU) against the default optimised paths, alternating REPS times; then the
# OpenMP wait policy (ACTIVE vs PASSIVE) on the optimised paths. Medians of the per-rep ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
REPS=${REPS:-3}
STEPS=${STEPS:-20}
WORKLOADS=${WORKLOADS:-twotower_ssl,din,dien}
BIN=${BIN:-build/recsys}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
run() {  # label, env..., -- args...
  local label=$1; shift
  env "$@" "$BIN" bench --json --threads "$THREADS" --steps "$STEPS" --workloads "$WORKLOADS" "${EXTRA[@]}" \
    | sed "s/^/{\"rep\": $rep, \"label\": \"$label\", \"r\": /; s/\$/}/" >> "$OUT/all.jsonl" || true
}
for rep in $(seq 1 "$REPS"); do
  echo "# rep $rep" >&2
  EXTRA=(--plain); run plain OMP_WAIT_POLICY=PASSIVE
  EXTRA=(); run optimised OMP_WAIT_POLICY=PASSIVE
  EXTRA=(); run active OMP_WAIT_POLICY=ACTIVE
done
/usr/bin/python3 - "$OUT/all.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for x in rows:
    if "examples_per_s" in x["r"]:
        by.setdefault(x["r"]["workload"], {}).setdefault(x["rep"], {})[x["label"]] = x["r"]["examples_per_s"]
        by[x["r"]["workload"]][x["rep"]][x["label"] + "_cpu"] = x["r"]["cpu_ms_per_step"]
print(f"{'workload':<13} {'plain ex/s':>11} {'optimised':>10} {'opt/plain':>10} {'cpu ratio':>10} {'ACTIVE ex/s':>12} {'PASSIVE/ACTIVE':>15}")
for name, reps in by.items():
    med = statistics.median
    get = lambda k: [v[k] for v in reps.values() if k in v]
    r1 = [v["optimised"] / v["plain"] for v in reps.values() if "plain" in v and "optimised" in v]
    r2 = [v["optimised"] / v["active"] for v in reps.values() if "active" in v and "optimised" in v]
    r3 = [v["plain_cpu"] / v["optimised_cpu"] for v in reps.values() if "plain_cpu" in v and "optimised_cpu" in v]
    print(f"{name:<13} {med(get('plain')):>11.0f} {med(get('optimised')):>10.0f} {med(r1):>10.2f} {med(r3):>10.2f} "
          f"{med(get('active')):>12.0f} {med(r2):>15.2f}   per rep: "
          + " ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(r1, r2)))
PY
