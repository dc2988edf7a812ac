"""Prefill sizes across sessions and GPUs: dispatch / cuBLAS by N, from committed kernel-bench JSONs.

usage: python benchmarks/plot_prefill.py OUT.png LABEL=results/kernel_....json [LABEL=...]
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out, runs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
fig, ax = plt.subplots(figsize=(7, 4.5))
for label, path in runs:
    large = [r for r in json.load(open(path))["large_n"] if r["format"] == "bitmap"]
    pts = sorted((r["N"], r["dispatch_vs_dense"]) for r in large)
    ax.plot([n for n, _ in pts], [v for _, v in pts], marker="o", label=label)
r0 = large[0]
ax.axhline(1.0, color="gray", lw=0.8, ls="--")
ax.axhline(0.9, color="red", lw=0.8, ls=":", label="issue floor 0.9x")
ax.set_xscale("log", base=2)
ax.set_xlabel("tokens N")
ax.set_ylabel("dispatch / cuBLAS (F.linear)")
ax.set_title(f"prefill, {r0['M']}x{r0['K']} bitmap at {r0['sparsity']:.0%}")
ax.legend(loc="upper right", ncol=2, fontsize=8)  # the top right stays clear of the lines
fig.tight_layout()
fig.savefig(out, dpi=120)
print(f"wrote {out}")
