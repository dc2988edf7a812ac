"""`flashllm bench decode`: each block layout's decode alone - shared memory to mma.sync A registers, no global
memory, no MMA - in SM cycles per 1024 weights, against the budget of docs/kernels.md ("What bounds the decode
kernels").

Every CTA holds the same `--blocks` 64x64 blocks of one random weight (normal values, the smallest magnitudes
pruned to the sparsity) in shared memory and its four warps decode them `--iters` times; one wave of
`--ctas-per-sm` CTAs per SM.  An SM's cycles are its clock64 span from the first CTA's start to the last one's
end; cycles per 1024 weights = span / (1024-weight strips decoded on that SM), median over SMs, then over
`--reps` launches.  Every design's fragments are checked against the weight before it is timed.  With `--ncu`,
Nsight Compute counts the issued warp-instructions per pipe and the shared-memory wavefronts in a second run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

# SM cycles per 1024 weights the whole SpMM may spend (decode included) for a speedup over cuBLAS at ~90 % of
# copy bandwidth: 141 / target on the H200, 198 / target on the H100 (docs/kernels.md, "What bounds the decode
# kernels").
BUDGET = {"H200 2.8x (80%)": 141 / 2.8, "H200 4.0x (90%)": 141 / 4.0}
NCU_METRICS = {
    "inst": "smsp__inst_executed.sum",
    "alu": "smsp__inst_executed_pipe_alu.sum",
    "fma": "smsp__inst_executed_pipe_fma.sum",
    "xu": "smsp__inst_executed_pipe_xu.sum",
    "lsu": "smsp__inst_executed_pipe_lsu.sum",
    "smem_wavefronts": "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum",
}


def pruned_weight(blocks: int, sparsity: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 64 * blocks, generator=g).half()
    k = int(round(sparsity * w.numel()))
    if k:
        w.view(-1)[w.float().abs().view(-1).argsort()[:k]] = 0
    return w


def check(design: str, weight: torch.Tensor, data, offsets) -> None:
    from flashllm.kernels import decode_bench as db
    _, frags = db.launch(design, data, offsets, grid=1, iters=1, check=True)
    want = db.expected_fragments(weight)
    bad = (frags[0].cpu() != want).nonzero()
    if len(bad):
        raise AssertionError(f"{design}: {len(bad)} of {want.numel()} fragment registers wrong, first at "
                             f"[block, strip, f, q, lane] = {bad[0].tolist()}")


def cycles_per_1024(clocks: torch.Tensor, iters: int, blocks: int) -> float:
    """Median over SMs of span / strips decoded (one strip of one block = 1024 weights)."""
    clocks = clocks.cpu()
    per_sm = []
    for sm in clocks[:, 2].unique():
        on = clocks[clocks[:, 2] == sm]
        span = (on[:, 1].max() - on[:, 0].min()).item()
        per_sm.append(span / (len(on) * iters * blocks * 4))
    return float(torch.tensor(per_sm).median())


def run_ncu(a) -> dict:
    """{(design, sparsity): {metric: per 1024 weights}} from Nsight Compute over a --profile-pass run."""
    cmd = ["ncu", "--csv", "--print-units", "base", "--kernel-name", "regex:decode_bench",
           "--metrics", ",".join(NCU_METRICS.values()), sys.executable, "-m", "flashllm.bench", "decode",
           "--profile-pass", "--designs", a.designs, "--sparsities", a.sparsities, "--blocks", str(a.blocks),
           "--iters", str(a.ncu_iters), "--ctas-per-sm", str(a.ctas_per_sm), "--seed", str(a.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(f"ncu failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
        return {}
    return parse_ncu(proc.stdout + "\n" + proc.stderr)  # ncu may write its CSV to either stream


def parse_ncu(stdout: str) -> dict:
    """The profile pass prints `PROFILED design sparsity weights` after each launch; ncu's CSV rows (quoted)
    number the launches from 0 in the same order."""
    launches = [line.split()[1:4] for line in stdout.splitlines() if line.startswith("PROFILED ")]
    rows = list(csv.reader(io.StringIO("\n".join(line for line in stdout.splitlines() if line.startswith('"')))))
    if not rows:
        return {}
    header, body = rows[0], rows[1:]
    col = {name: header.index(name) for name in ("ID", "Metric Name", "Metric Value")}
    values: dict[int, dict] = {}
    for r in body:
        values.setdefault(int(r[col["ID"]]), {})[r[col["Metric Name"]]] = float(r[col["Metric Value"]].replace(",", ""))
    out = {}
    for i, (design, sparsity, weights) in enumerate(launches):
        if i in values:
            per = float(weights) / 1024
            out[(design, sparsity)] = {name: values[i].get(metric, float("nan")) / per
                                       for name, metric in NCU_METRICS.items()}
    return out


def plot(result: dict, path: Path) -> None:
    from .plotting import pyplot
    plt = pyplot()
    if plt is None:
        return
    rows = result["rows"]
    designs = list(dict.fromkeys(r["design"] for r in rows))
    sparsities = sorted({r["sparsity"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(designs)
    for i, d in enumerate(designs):
        ys = [next(r["cycles_per_1024"] for r in rows if r["design"] == d and r["sparsity"] == s) for s in sparsities]
        ax.bar([j + i * width for j in range(len(sparsities))], ys, width, label=d)
    for (name, budget), style in zip(BUDGET.items(), ("--", ":")):
        ax.axhline(budget, color="black", linestyle=style, linewidth=1, label=f"budget {name}: {budget:.0f}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sparsities))], [f"{s:.0%}" for s in sparsities])
    ax.set_xlabel("sparsity")
    ax.set_ylabel("SM cycles per 1024 weights (decode only)")
    ax.set_title(f"Decode alone, shared memory to A registers - {result['device']}, {result['date']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"# Decode microbenchmark: {result['device']}, {result['date']}", "",
             f"`{result['command']}`", "",
             "SM cycles per 1024 weights (clock64, median over SMs and launches), bytes per weight of the layout, "
             "and (with --ncu) issued warp-instructions per 1024 weights: all, by pipe, and shared-memory "
             "wavefronts.  Budget: " + ", ".join(f"{k} {v:.0f} cycles" for k, v in BUDGET.items()) +
             " for the whole SpMM, decode included.", "",
             "| design | sparsity | cycles / 1024 | B / weight | inst | alu | fma | xu | lsu | smem wavefronts |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        n = r.get("ncu") or {}
        cells = " | ".join(f"{n[k]:.0f}" if k in n else "-" for k in NCU_METRICS)
        lines.append(f"| {r['design']} | {r['sparsity']:.0%} | {r['cycles_per_1024']:.1f} | "
                     f"{r['bytes_per_weight']:.3f} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from flashllm.kernels.decode_bench import DESIGNS
    ap = argparse.ArgumentParser(prog="flashllm bench decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--designs", default=",".join(DESIGNS), help=f"comma-separated, of {', '.join(DESIGNS)}")
    ap.add_argument("--sparsities", default="0.5,0.7,0.8,0.9", help="comma-separated")
    ap.add_argument("--blocks", type=int, default=8, help="64x64 blocks in each CTA's shared memory")
    ap.add_argument("--ctas-per-sm", type=int, default=3, help="CTAs (4 warps each) resident per SM")
    ap.add_argument("--iters", type=int, default=400, help="passes over the blocks per launch")
    ap.add_argument("--reps", type=int, default=5, help="timed launches (median)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--ncu", action="store_true", help="also count instructions with Nsight Compute (ncu on PATH)")
    ap.add_argument("--ncu-iters", type=int, default=40, help="passes per launch under ncu")
    ap.add_argument("--profile-pass", action="store_true", help=argparse.SUPPRESS)  # what --ncu profiles
    ap.add_argument("--out", default=None, help="folder for the JSON, markdown and PNG")
    a = ap.parse_args(argv)
    designs = a.designs.split(",")
    unknown = [d for d in designs if d not in DESIGNS]
    if unknown:
        ap.error(f"unknown design(s) {', '.join(unknown)}: choose from {', '.join(DESIGNS)}")
    sparsities = [float(s) for s in a.sparsities.split(",")]
    if any(not 0 <= s < 1 for s in sparsities):
        ap.error("sparsities must be in [0, 1)")
    if not torch.cuda.is_available():
        raise SystemExit("flashllm bench decode needs a CUDA GPU")
    from flashllm.kernels import decode_bench as db

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    grid = sms * a.ctas_per_sm
    per_sm_smem = torch.cuda.get_device_properties(0).shared_memory_per_multiprocessor
    rows = []
    for design in designs:
        for s in sparsities:
            weight = pruned_weight(a.blocks, s, a.seed)
            data, offsets = db.encode(design, weight)
            smem = db.smem_bytes(offsets)
            if a.ctas_per_sm * (smem + 1024) > per_sm_smem:
                raise SystemExit(f"{design} at {s:.0%}: {a.ctas_per_sm} CTAs of {smem} bytes do not fit an SM's "
                                 f"{per_sm_smem}: lower --blocks or --ctas-per-sm")
            if a.profile_pass:
                db.launch(design, data, offsets, grid, a.iters)
                torch.cuda.synchronize()
                print(f"PROFILED {design} {s} {grid * a.iters * a.blocks * 4 * 1024}", flush=True)
                continue
            check(design, weight, data, offsets)
            db.launch(design, data, offsets, grid, a.iters)  # warm-up
            reps = []
            for _ in range(a.reps):
                clocks, _ = db.launch(design, data, offsets, grid, a.iters)
                reps.append(cycles_per_1024(clocks, a.iters, a.blocks))
            cyc = float(torch.tensor(reps).median())
            row = {"design": design, "sparsity": s, "cycles_per_1024": cyc, "reps": reps,
                   "bytes_per_weight": int(offsets[-1]) / weight.numel()}
            rows.append(row)
            print(f"{design:10s} {s:4.0%}: {cyc:6.1f} SM cycles per 1024 weights, "
                  f"{row['bytes_per_weight']:.3f} B/weight", flush=True)
    if a.profile_pass:
        return 0
    if a.ncu:
        counts = run_ncu(a)
        for r in rows:
            r["ncu"] = counts.get((r["design"], str(r["sparsity"])))
    name = torch.cuda.get_device_name()
    short = next((g for g in ("H200", "H100", "A100") if g in name), name.replace(" ", "_"))
    result = {"device": name, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "command": "flashllm bench decode " + " ".join(argv if argv is not None else sys.argv[1:]),
              "settings": {k: v for k, v in vars(a).items() if k != "out"}, "budget": BUDGET, "rows": rows}
    md = markdown(result)
    print(md)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        stem = Path(a.out) / f"decode_{short}_{result['date']}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
        stem.with_suffix(".md").write_text(md)
        plot(result, stem.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
