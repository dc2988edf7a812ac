"""Prefill sizes across sessions and GPUs: dispatch / cuBLAS by N, from committed kernel-bench JSONs.

usage: python benchmarks/plot_prefill.py OUT.png LABEL=results/kernel_....json [LABEL=...]
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from flashllm.bench.kernel import plot_prefill_lines  # noqa: E402

out, runs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
lines = {label: [r for r in json.load(open(path))["large_n"] if r["format"] == "bitmap"] for label, path in runs}
r0 = next(iter(lines.values()))[0]
fig, ax = plt.subplots(figsize=(7, 4.5))
plot_prefill_lines(ax, lines, f"prefill, {r0['M']}x{r0['K']} bitmap at {r0['sparsity']:.0%}")
fig.tight_layout()
fig.savefig(out, dpi=120)
print(f"wrote {out}")
