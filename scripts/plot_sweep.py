#!/usr/bin/python3
"""Bar chart of head / tail Recall@50 per variant from a sweep's results.csv (mean ± std)."""
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(out_dir: str, metric: str = "") -> None:
    rows = list(csv.DictReader(open(Path(out_dir) / "results.csv")))
    if not metric:
        ks = sorted({int(r["metric"].split("@")[1].split("/")[0]) for r in rows
                     if r["metric"].startswith("recall@") and r["metric"].endswith("/tail")})
        if not ks:
            sys.exit("no recall@K/head|tail metrics in results.csv")
        metric = "recall@50" if 50 in ks else f"recall@{ks[-1]}"
    variants = []
    for r in rows:
        if r["variant"] not in variants:
            variants.append(r["variant"])
    def get(v, m):
        for r in rows:
            if r["variant"] == v and r["metric"] == m:
                return float(r["mean"]), float(r["std"])
        return float("nan"), 0.0
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 * len(variants) + 2), 4))
    for ax, sl in zip(axes, ["head", "tail"]):
        means, stds = zip(*[get(v, f"{metric}/{sl}") for v in variants])
        ax.bar(range(len(variants)), means, yerr=stds, capsize=3, color="#4878a8" if sl == "head" else "#c8643c")
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels(variants, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{metric} on {sl} items")
        lo = min(m - s for m, s in zip(means, stds))
        hi = max(m + s for m, s in zip(means, stds))
        pad = (hi - lo) * 0.3 + 1e-4
        ax.set_ylim(max(0.0, lo - pad), hi + pad)
    fig.tight_layout()
    path = Path(out_dir) / f"{metric.replace('@', '')}_head_tail.png"
    fig.savefig(path, dpi=110)
    print(path)


if __name__ == "__main__":
    main(sys.argv[1], *(sys.argv[2:3]))
