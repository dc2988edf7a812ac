"""`flashllm bench kernel`: our SpMM kernels vs dense cuBLAS and PyTorch's sparse peers.

Shapes are the Flash-LLM paper's (OPT-30B/66B/175B layers); N = tokens; weights are random
values under uniformly random unstructured masks.  Prints a summary table, writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

import flashllm
from flashllm.kernels.spmm import config_for
from flashllm.prune import magnitude_prune

from .plotting import pyplot
from .timing import copies_to_defeat_l2, copy_bandwidth, time_graph

PAPER_SHAPES = [(21504, 7168), (7168, 7168), (28672, 7168), (7168, 28672), (27648, 9216), (9216, 9216),
                (36864, 9216), (9216, 36864), (36864, 12288), (12288, 12288), (49152, 12288), (12288, 49152)]


def clone_weight(w):
    return flashllm.SparseWeight(w.format, w.shape, w.dtype, w.nnz, w.max_block_bytes,
                                 {k: v.clone() for k, v in w.tensors.items()})


def rel_err(y, ref):
    return ((y.float() - ref).norm() / ref.norm()).item()


def time_eager(fn, reps: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) * 1e3 / reps


def bench_peers(w_dense, x_by_n, n_peer):
    """torch 2:4 semi-structured and cuSPARSE CSR, at one N (they are slow; eager timing suffices)."""
    out = {}
    x = x_by_n[n_peer]
    try:
        from torch.sparse import to_sparse_semi_structured
        m, k = w_dense.shape
        w24 = w_dense.clone().view(m, k // 4, 4)
        drop = w24.abs().argsort(-1)[..., :2]  # 2:4 pattern: keep the 2 largest of every 4
        w24.scatter_(-1, drop, 0)
        w24 = w24.view(m, k)
        ws = to_sparse_semi_structured(w24)
        out["semi_structured_2:4"] = time_eager(lambda: F.linear(x, ws))
    except Exception as e:  # backend or shape not supported on this build
        out["semi_structured_2:4_error"] = repr(e)[:200]
    try:
        csr = w_dense.to_sparse_csr()
        xt = x.T.contiguous()
        out["cusparse_csr"] = time_eager(lambda: torch.sparse.mm(csr, xt), reps=5)
    except Exception as e:
        out["cusparse_csr_error"] = repr(e)[:200]
    return out


def interleaved_medians(columns: dict, reps: int, timer=time_graph, launches: int = 10) -> dict:
    """Median microseconds of each column (a list of callables, one per weight copy), timed `reps` times
    round-robin: one machine's single runs of a few-hundred-microsecond kernel move by up to ~10%, and
    interleaving spreads a slow stretch over every column instead of one."""
    times = {label: [] for label in columns}
    for _ in range(reps):
        for label, fns in columns.items():
            times[label].append(timer(fns, launches=launches, replays=5))
    return {label: statistics.median(ts) for label, ts in times.items()}


# Prefill (--large-n): what flashllm.spmm runs for a weight compressed "auto" (the bitmap or Tiled-CSL at 50%, the
# pair bitmap from 65%) against cuBLAS, over the paper's shapes.  Device time on an H100 (cuBLAS ~690 TFLOP/s and
# ~2.9 TB/s, 1.79 ms for 12288x12288 at N=4096; dispatch taken at ~1.2x cuBLAS): the 12 shapes hold 3.45e9
# weights, so one cuBLAS call on each costs ~2.4 ms summed at N <= 256, then 2 * 3.45e9 * N / 690e12 (41 ms at
# N=4096).  Each (shape, N) times cuBLAS and the 4 sparsities interleaved, reps * (6 * launches + copies) calls a
# column (time_graph: one warm-up replay and 5 timed), reps and launches from prefill_timing: ~60 s of kernels,
# plus ~25 s of pruning (topk), encoding, graph captures and the error checks, so ~1.5 min for the defaults (the
# decode table before it ~2.5 min: ~4 min for `bench kernel --large-n`; NVRTC compiles on a fresh machine come
# on top).  Peak memory ~15 GB (49152x12288: the weight and its L2-defeating copy, 4 pruned copies for the error
# check, the encoded copies, topk's indices while pruning, x and y at N=4096).
PREFILL_SPARSITIES = (0.5, 0.7, 0.8, 0.9)
PREFILL_NS = (64, 128, 256, 512, 1024, 2048, 4096)
TARGET_MIN_N = 256  # the targets hold from this N on; smaller N are shown, not judged
# (from sparsity, median floor, min floor): the first row whose sparsity a weight reaches sets its target
PREFILL_TARGETS = ((0.9, 1.5, None), (0.8, 1.3, None), (0.5, 1.0, 0.95))
TARGETS_TEXT = ("50-70%: >= 0.95x at every N (min) and >= 1.0x median; 80%: >= 1.3x median; 90%: >= 1.5x median; "
                f"every N >= {TARGET_MIN_N}")


def prefill_timing(n: int) -> tuple[int, int]:
    """(reps, launches a graph) at N tokens: from N=1024 on one call runs 0.1-10 ms and varies little, so fewer."""
    return (5 if n <= 512 else 3), (10 if n <= 1024 else 4)


def bench_large_n(shapes=PAPER_SHAPES, sparsities=PREFILL_SPARSITIES, ns=PREFILL_NS, dtype=torch.float16) -> list:
    """Prefill sizes: cuBLAS against what flashllm.spmm dispatches to, every (shape, sparsity, N).  The weight is
    random normal, pruned by magnitude (per row) to each sparsity and encoded once for every N."""
    gen = torch.Generator("cuda").manual_seed(0)
    out = []
    for m, k in shapes:
        w = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
        dense = [w] + [w.clone() for _ in range(copies_to_defeat_l2(w.nbytes) - 1)]
        pruned, sparse = {}, {}
        for s in sparsities:
            pruned[s] = magnitude_prune(w, s)
            sw = flashllm.compress(pruned[s], "auto")
            sparse[s] = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
        for n in ns:
            x = torch.randn(n, k, device="cuda", generator=gen).to(dtype)
            reps, launches = prefill_timing(n)
            columns = {"dense": [lambda c=c: F.linear(x, c) for c in dense]}
            columns.update({s: [lambda c=c: flashllm.spmm(x, c) for c in copies] for s, copies in sparse.items()})
            us = interleaved_medians(columns, reps, launches=max(launches, *map(len, columns.values())))
            line = []
            for s, copies in sparse.items():
                err = rel_err(flashllm.spmm(x, copies[0]), F.linear(x, pruned[s]).float())
                out.append(dict(M=m, K=k, N=n, sparsity=s, format=copies[0].format, bytes=copies[0].nbytes, reps=reps,
                                dense_us=us["dense"], dispatch_us=us[s], dispatch_vs_dense=us["dense"] / us[s],
                                rel_err=err))
                line.append(f"{s:.0%} {copies[0].format} {us[s]:8.1f} x{us['dense'] / us[s]:4.2f} err {err:.0e}")
            # the decode rows' "MxK N=" start: benchmarks/device_run.sh keeps these out of its short output
            print(f"{m}x{k} N={n:4d} prefill cuBLAS {us['dense']:8.1f} us | " + " | ".join(line), flush=True)
            del x, columns
        del w, dense, pruned, sparse
        torch.cuda.empty_cache()
    return out


def launch_overhead(dtype=torch.float16):
    """Host cost of one eager flashllm.spmm call (Python checks + custom op + driver launch)."""
    w = torch.randn(1024, 1024, device="cuda").to(dtype)
    sw = flashllm.compress(w * (torch.rand_like(w) > 0.7), "bitmap")
    x = torch.randn(8, 1024, device="cuda").to(dtype)
    res = {}
    for name, fn in (("flashllm.spmm", lambda: flashllm.spmm(x, sw)), ("F.linear", lambda: F.linear(x, w))):
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(2000):
            fn()
        host = (time.perf_counter() - t0) / 2000 * 1e6
        torch.cuda.synchronize()
        res[name] = dict(host_us_per_call=host, gpu_us=time_graph([fn], launches=50, replays=5))
        print(f"launch overhead: {name:14s} {host:6.1f} us host per eager call, {res[name]['gpu_us']:5.1f} us GPU", flush=True)
    return res


def run(shapes, ns, sparsities, formats, dtype, peers_at, out_dir, large_n=False):
    """The decode table over shapes x sparsities x formats x ns; large_n: True, or bench_large_n's keyword
    arguments (shapes, sparsities, ns), adds the prefill sweep (result key "prefill") and launch overhead."""
    dev = torch.cuda.get_device_name()
    copy_bw = copy_bandwidth()
    print(f"# {dev}: device-to-device copy {copy_bw / 1e9:.0f} GB/s (read + write)", flush=True)
    rows = []
    gen = torch.Generator("cuda").manual_seed(0)
    for (m, k) in shapes:
        w = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
        x_by_n = {n: torch.randn(n, k, device="cuda", generator=gen).to(dtype) for n in ns}
        dense_copies = [w] + [w.clone() for _ in range(copies_to_defeat_l2(w.numel() * 2) - 1)]
        dense_us = {n: time_graph([lambda n=n, c=c: F.linear(x_by_n[n], c) for c in dense_copies]) for n in ns}
        del dense_copies
        for s in sparsities:
            ws = w * (torch.rand(m, k, device="cuda", generator=gen) >= s)
            refs = {n: x_by_n[n].float() @ ws.float().T for n in ns}
            peer = bench_peers(ws, x_by_n, peers_at) if s in (0.5, 0.8) and peers_at in ns else {}
            for fmt in formats:
                t0 = time.perf_counter()
                sw = flashllm.compress(ws, fmt)
                torch.cuda.synchronize()
                encode_s = time.perf_counter() - t0
                copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
                for n in ns:
                    x = x_by_n[n]
                    err = rel_err(flashllm.spmm(x, sw), refs[n])
                    us = time_graph([lambda c=c: flashllm.spmm(x, c) for c in copies])
                    cfg = config_for(sw, n)
                    row = dict(M=m, K=k, N=n, sparsity=s, format=fmt, us=us, dense_us=dense_us[n],
                               speedup=dense_us[n] / us, bytes=sw.nbytes, bytes_per_elt=sw.nbytes / (m * k),
                               eff_bw_GBs=sw.nbytes / us / 1e3, dense_bw_GBs=2 * m * k / dense_us[n] / 1e3,
                               rel_err=err, encode_s=encode_s, config=cfg.__dict__,
                               auto=flashllm.formats.auto_format(ws) == fmt)
                    if n == peers_at:
                        row.update({f"peer_{k_}": v for k_, v in peer.items()})
                    rows.append(row)
                    print(f"{m}x{k} N={n:3d} s={s:.0%} {fmt:9s} {us:8.1f} us  dense {dense_us[n]:7.1f}  "
                          f"x{dense_us[n] / us:5.2f}  {row['eff_bw_GBs']:6.0f} GB/s  err {err:.1e}", flush=True)
                del copies, sw
            del ws, refs
        del w
        torch.cuda.empty_cache()
    result = dict(device=dev, date=str(date.today()), torch=torch.__version__, host=platform.node(),
                  copy_bw_GBs=copy_bw / 1e9, dtype=str(dtype), rows=rows)
    table = None
    if large_n:  # results before the sweep held one shape's rows under "large_n"; plot() still reads those
        result["prefill"] = bench_large_n(dtype=dtype, **(large_n if isinstance(large_n, dict) else {}))
        cells = prefill_cells(result["prefill"])
        result["prefill_summary"] = dict(
            cells=[dict(sparsity=s, N=n, **c) for (s, n), c in cells.items()],
            verdicts={str(s): prefill_verdict(s, cells) for s in sorted({s for s, _ in cells})})
        result["launch_overhead"] = launch_overhead(dtype)
        table = prefill_table(result["prefill"], dev)
    summarize(result)
    if out_dir:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = f"kernel_{dev.replace(' ', '_')}_{date.today()}"
        (out_dir / f"{tag}.json").write_text(json.dumps(result, indent=1))
        plot(result, out_dir / f"{tag}.png")
        if table:
            (out_dir / f"{tag}_prefill.md").write_text(table + "\n")
            plot_prefill(result, out_dir / f"{tag}_prefill.png")
    if table:
        print("\n" + table, flush=True)  # last: the short output of a device run ends on it
    return result


def summarize(result):
    rows = result["rows"]
    print(f"\n## {result['device']}  copy {result['copy_bw_GBs']:.0f} GB/s  — median speedup over cuBLAS "
          "(median effective GB/s on compressed bytes)")
    formats = sorted({r["format"] for r in rows})
    print(f"{'sparsity':>8} | " + " | ".join(f"{f + ' N<=32':>22} | {f + ' N=64':>20}" for f in formats)
          + " | best N<=32 | auto N<=32 | auto worst N<=64 | max err")
    for s in sorted({r["sparsity"] for r in rows}):
        cells = []
        for f in formats:
            for sel in (lambda r: r["N"] <= 32, lambda r: r["N"] == 64):
                sub = [r for r in rows if r["sparsity"] == s and r["format"] == f and sel(r)]
                cells.append(f"{statistics.median(r['speedup'] for r in sub):5.2f}x "
                             f"({statistics.median(r['eff_bw_GBs'] for r in sub):5.0f})" if sub else "-")
        best = {}
        for r in rows:
            if r["sparsity"] == s:
                key = (r["M"], r["K"], r["N"])
                best[key] = max(best.get(key, 0), r["speedup"])
        small = [v for (_, _, n), v in best.items() if n <= 32]
        auto = [r["speedup"] for r in rows if r["sparsity"] == s and r["N"] <= 32 and r.get("auto")]
        # the floor: the auto format's slowest point at any N <= 64 (what a model compressed with "auto" meets)
        worst = min([r["speedup"] for r in rows if r["sparsity"] == s and r["N"] <= 64 and r.get("auto")]
                    or best.values())
        err = max(r["rel_err"] for r in rows if r["sparsity"] == s)
        med = lambda v: statistics.median(v) if v else float("nan")  # noqa: E731
        print(f"{s:8.0%} | " + " | ".join(f"{c:>22}" for c in cells) +
              f" | {med(small):9.2f}x | {med(auto):9.2f}x | {worst:15.2f}x | {err:.1e}")
    print("best: the fastest format per (shape, N); auto: the format compress(format='auto') picks")


def plot(result, path):
    plt = pyplot()
    if plt is None:
        return
    rows = result["rows"]
    formats = sorted({r["format"] for r in rows})
    large = result.get("large_n") or []
    panels = len(formats) + (1 if large else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    if large:
        plot_large_n(axes[0][-1], large, result["device"])
    for ax, f in zip(axes[0], formats):
        for n in sorted({r["N"] for r in rows}):
            xs = sorted({r["sparsity"] for r in rows})
            ys = [statistics.median(r["speedup"] for r in rows if r["format"] == f and r["N"] == n and r["sparsity"] == s)
                  for s in xs]
            ax.plot([100 * s for s in xs], ys, marker="o", label=f"N={n}")
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_title(f"{f}: median over shapes, {result['device']}")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("speedup over cuBLAS (F.linear)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def prefill_target(sparsity: float) -> tuple[float, float | None] | None:
    """(median floor, min floor or None) the issue sets at this sparsity; None below 50%."""
    for lo, median_floor, min_floor in PREFILL_TARGETS:
        if sparsity >= lo - 1e-9:
            return median_floor, min_floor
    return None


def prefill_cells(rows: list) -> dict:
    """{(sparsity, N): dict(median, min, max, shapes)} of cuBLAS time / dispatch time over the shapes."""
    groups = {}
    for r in rows:
        groups.setdefault((r["sparsity"], r["N"]), []).append(r["dispatch_vs_dense"])
    return {key: dict(median=statistics.median(v), min=min(v), max=max(v), shapes=len(v))
            for key, v in sorted(groups.items())}


def prefill_verdict(sparsity: float, cells: dict) -> str:
    """'PASS', 'short: <each miss>' against the target at every N >= TARGET_MIN_N, or '-' (no target, no such N)."""
    target = prefill_target(sparsity)
    judged = sorted((n, c) for (s, n), c in cells.items() if s == sparsity and n >= TARGET_MIN_N)
    if target is None or not judged:
        return "-"
    median_floor, min_floor = target
    misses = []
    for n, c in judged:
        if c["median"] < median_floor:
            misses.append(f"N={n} median {c['median']:.3f}x")
        if min_floor is not None and c["min"] < min_floor:
            misses.append(f"N={n} min {c['min']:.3f}x")
    return "short: " + ", ".join(misses) if misses else "PASS"


def prefill_table(rows: list, device: str) -> str:
    """Markdown: a row per sparsity, a column per N (median over shapes, the min in brackets), target, verdict."""
    cells = prefill_cells(rows)
    ns = sorted({n for _, n in cells})
    shapes = len({(r["M"], r["K"]) for r in rows})
    head = ["sparsity"] + [f"N={n}" + ("*" if n < TARGET_MIN_N else "") for n in ns] + ["target", "verdict"]
    lines = [f"## Prefill, {device}: cuBLAS time / flashllm.spmm time, median over {shapes} shapes (min)", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in sorted({s for s, _ in cells}):
        formats = "/".join(sorted({r["format"] for r in rows if r["sparsity"] == s}))
        target = prefill_target(s)
        goal = "-" if target is None else f">= {target[0]:.2f}x median" + (
            "" if target[1] is None else f", >= {target[1]:.2f}x min")
        row = [f"{s:.0%} ({formats})"] + [
            f"{cells[s, n]['median']:.2f}x ({cells[s, n]['min']:.2f})" if (s, n) in cells else "-" for n in ns]
        lines.append("| " + " | ".join(row + [goal, prefill_verdict(s, cells)]) + " |")
    lines += ["", f"targets (issue #24): {TARGETS_TEXT}; * shown, not judged"]
    return "\n".join(lines)


def plot_prefill(result: dict, path) -> None:
    """Speedup over cuBLAS by N (log2), a line per sparsity: the median over shapes in a min..max band, 1.0 marked,
    and each sparsity's median target dotted over the N it holds at."""
    plt = pyplot()
    if plt is None:
        return
    rows = result["prefill"]
    cells = prefill_cells(rows)
    ns = sorted({n for _, n in cells})
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for s in sorted({s for s, _ in cells}):
        pts = sorted((n, c) for (s_, n), c in cells.items() if s_ == s)
        xs = [n for n, _ in pts]
        (line,) = ax.plot(xs, [c["median"] for _, c in pts], marker="o", label=f"{s:.0%}")
        ax.fill_between(xs, [c["min"] for _, c in pts], [c["max"] for _, c in pts], color=line.get_color(),
                        alpha=0.15, lw=0)
        target = prefill_target(s)
        judged = [n for n in xs if n >= TARGET_MIN_N]
        if target is not None and judged:
            ax.hlines(target[0], min(judged), max(judged), colors=line.get_color(), linestyles=":", lw=1)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    shapes = len({(r["M"], r["K"]) for r in rows})
    ax.set_title(f"prefill: flashllm.spmm vs cuBLAS, median of {shapes} shapes (band: min..max), {result['device']}",
                 fontsize=9)
    ax.set_xlabel(f"tokens N (dotted: the median target, from N={TARGET_MIN_N})")
    ax.set_ylabel("speedup over cuBLAS (F.linear)")
    ax.legend(title="sparsity", loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def plot_prefill_lines(ax, lines: dict, title: str) -> None:
    """Dispatch / cuBLAS by N, one line per label ({label: large_n rows}), with a line at 0.9x."""
    for label, rows in lines.items():
        pts = sorted((r["N"], r["dispatch_vs_dense"]) for r in rows)
        ax.plot([n for n, _ in pts], [v for _, v in pts], marker="o", label=label)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.axhline(0.9, color="red", lw=0.8, ls=":", label="0.9x cuBLAS")
    ax.set_xscale("log", base=2)
    ax.set_title(title)
    ax.set_xlabel("tokens N")
    ax.set_ylabel("speedup over cuBLAS (F.linear)")
    ax.legend(loc="upper right", ncol=2, fontsize=8)  # the top right stays clear of the lines


def plot_large_n(ax, large: list, device: str) -> None:
    """Prefill sizes: what dispatch picks, against cuBLAS, by N (one line per format)."""
    m, k, s = large[0]["M"], large[0]["K"], large[0]["sparsity"]
    plot_prefill_lines(ax, {f: [r for r in large if r["format"] == f] for f in sorted({r["format"] for r in large})},
                       f"prefill {m}x{k} at {s:.0%}: dispatch vs cuBLAS, {device}")


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'all' (the 12 paper shapes), 'quick' (3 of them) or a comma list of MxK."""
    if text == "all":
        return list(PAPER_SHAPES)
    if text == "quick":
        return [PAPER_SHAPES[1], PAPER_SHAPES[4], PAPER_SHAPES[7]]
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s]


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="flashllm bench kernel", description=__doc__)
    ap.add_argument("--shapes", default="all", help="'all', 'quick' (3 shapes) or comma list of MxK")
    ap.add_argument("--ns", default="8,16,32,64", help="token counts N, comma-separated")
    ap.add_argument("--sparsities", default="0.5,0.6,0.7,0.8,0.9", help="sparsities, comma-separated")
    ap.add_argument("--formats", default="bitmap,tiled_csl,sell,pairmap", help="formats, comma-separated")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"], help="weight and x dtype")
    ap.add_argument("--peers-at", type=int, default=16, help="N at which 2:4 and cuSPARSE are timed (0: never)")
    ap.add_argument("--out", default=None, help="directory for JSON and PNG")
    ap.add_argument("--large-n", action="store_true",
                    help="also time prefill sizes (what flashllm.spmm runs against cuBLAS, N up to 4096, ~1.5 min "
                    "on an H100 with the defaults) and launch overhead; the table and its targets print last")
    ap.add_argument("--large-n-shapes", default="all", help="with --large-n: 'all' (the 12 paper shapes), 'quick' "
                    "or comma list of MxK")
    ap.add_argument("--large-n-sparsities", default=",".join(map(str, PREFILL_SPARSITIES)),
                    help="with --large-n: sparsities, comma-separated")
    ap.add_argument("--large-n-ns", default=",".join(map(str, PREFILL_NS)),
                    help=f"with --large-n: token counts N, comma-separated (N < {TARGET_MIN_N}: shown, not judged)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("flashllm bench kernel needs a CUDA GPU")
    prefill = dict(shapes=parse_shapes(a.large_n_shapes), sparsities=parse_floats(a.large_n_sparsities),
                   ns=parse_ints(a.large_n_ns)) if a.large_n else False
    run(parse_shapes(a.shapes), parse_ints(a.ns), parse_floats(a.sparsities), a.formats.split(","),
        getattr(torch, a.dtype), a.peers_at, a.out, prefill)


if __name__ == "__main__":
    main()
