#!/usr/bin/env bash
# Runs `recsys bench` and the PyTorch-Python reference (scripts/bench_reference.py) back to back,
# REPS times alternating, and prints the ratio table (medians over the repetitions; each
# repetition's ratio is taken between runs made one right after the other, since the machine is
# shared and noisy).
#
#   scripts/bench_compare.sh                       # 2 threads, twotower_ssl,din,dien, REPS=3
#   THREADS=2 REPS=5 WORKLOADS=din STEPS=30 scripts/bench_compare.sh
#   OMP_WAIT_POLICY=PASSIVE scripts/bench_compare.sh  # applies to both sides. Unset (default),
#                                                    # each side keeps its own default, as a
#                                                    # reviewer running both commands would:
#                                                    # libgomp's spin-then-sleep for Python,
#                                                    # recsys bench's load-based choice.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
REPS=${REPS:-3}
STEPS=${STEPS:-30}
WORKLOADS=${WORKLOADS:-twotower_ssl,din,dien}
PYTHON=${PYTHON:-/usr/bin/python3}   # Debian's python3-torch (LibTorch 1.13, as build/recsys)
BIN=${BIN:-build/recsys}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

[ -x "$BIN" ] || { echo "missing $BIN: build first (ninja -C build recsys)" >&2; exit 2; }
echo "# $(date -Is) threads=$THREADS reps=$REPS steps=$STEPS OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset}" >&2
for rep in $(seq 1 "$REPS"); do
  echo "# rep $rep: recsys bench" >&2
  "$BIN" bench --json --threads "$THREADS" --steps "$STEPS" --workloads "$WORKLOADS" --peak \
    | sed "s/^/{\"rep\": $rep, \"impl\": \"cpp\", \"r\": /; s/\$/}/" >> "$OUT/all.jsonl" || true
  echo "# rep $rep: PyTorch-Python reference" >&2
  "$PYTHON" scripts/bench_reference.py --threads "$THREADS" --steps "$STEPS" --workloads "$WORKLOADS" \
    | sed "s/^/{\"rep\": $rep, \"impl\": \"py\", \"r\": /; s/\$/}/" >> "$OUT/all.jsonl" || true
done

"$PYTHON" - "$OUT/all.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
targets = {"twotower_ssl": 3.0, "din": 2.5, "dien": 5.0}
by = {}
for x in rows:
    r = x["r"]
    if "examples_per_s" not in r:
        print("error:", r, file=sys.stderr)
        continue
    by.setdefault(r["workload"], {}).setdefault(x["rep"], {})[x["impl"]] = r
print(f"{'workload':<13} {'C++ ex/s':>10} {'Python ex/s':>12} {'ratio':>7} {'cpu ratio':>9} {'target':>7} "
      f"{'MFLOP/ex':>9} {'bound frac':>10} {'C++ RSS MB':>10} {'py RSS MB':>9} {'C++ mem ratio':>13}  ratios per rep")
for name, reps in by.items():
    pairs = [(v["cpp"], v["py"]) for v in reps.values() if "cpp" in v and "py" in v]
    if not pairs:
        continue
    ratios = [c["examples_per_s"] / p["examples_per_s"] for c, p in pairs]
    cpu_ratios = [c["examples_per_cpu_s"] / p["examples_per_cpu_s"] for c, p in pairs
                  if "examples_per_cpu_s" in c and "examples_per_cpu_s" in p]
    med = lambda xs: statistics.median(xs)
    c_eps = med([c["examples_per_s"] for c, _ in pairs])
    p_eps = med([p["examples_per_s"] for _, p in pairs])
    frac = med([c.get("flop_bound_fraction", float("nan")) for c, _ in pairs])
    mflop = pairs[0][0].get("flops_per_example", float("nan")) / 1e6
    cr = med(cpu_ratios) if cpu_ratios else float("nan")
    print(f"{name:<13} {c_eps:>10.0f} {p_eps:>12.0f} {med(ratios):>7.2f} {cr:>9.2f} {targets.get(name, 0):>7.1f} "
          f"{mflop:>9.2f} {frac:>10.3f} {med([c['peak_rss_mb'] for c, _ in pairs]):>10.0f} "
          f"{med([p['peak_rss_mb'] for _, p in pairs]):>9.0f} "
          f"{med([c.get('memory_ratio', float('nan')) for c, _ in pairs]):>13.2f}  "
          + " ".join(f"{r:.2f}" for r in ratios))
# Each repetition's figures: the host's slow phases show up in one side's examples/s.
print("\nper repetition: workload rep C++ ex/s Python ex/s ratio")
for name, reps in by.items():
    for rep, v in sorted(reps.items()):
        if "cpp" in v and "py" in v:
            c, p = v["cpp"]["examples_per_s"], v["py"]["examples_per_s"]
            print(f"  {name:<13} {rep:>3} {c:>10.0f} {p:>10.0f} {c / p:>6.2f}")
# How often each repetition met its target (a single run of both sides is one repetition).
print("\nrepetitions at or above the target:")
for name, reps in by.items():
    rs = [v["cpp"]["examples_per_s"] / v["py"]["examples_per_s"] for v in reps.values()
          if "cpp" in v and "py" in v]
    if rs and name in targets:
        met = sum(r >= targets[name] for r in rs)
        print(f"  {name:<13} {met} of {len(rs)} (target {targets[name]:.1f}, lowest {min(rs):.2f})")
EOF
