"""Encode / decode / validate timing of the formats on one large pruned matrix.

    flashllm bench encode                                 # 7168x28672 fp16, 80% sparse, every format
    python -m flashllm.bench.encode --sparsity 0.5 --out benchmarks/results/encode.json  # the same

GB/s is the dense input size (M * K * element size) over the wall time.  On a GPU each timing
is bracketed by torch.cuda.synchronize() after one untimed warm-up run; on a CPU every run counts
(the first one is the figure a user waits for).  Other jobs on a shared machine slow a CPU run
down, so the load average before and after and the CPU seconds the process used are recorded too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

import flashllm

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
ENCODE_TARGET_S = 10.0  # a CPU budget for encoding the default matrix, checked and printed


def random_pruned(m: int, k: int, sparsity: float, dtype, device, seed: int) -> torch.Tensor:
    g = torch.Generator(device).manual_seed(seed)
    w = torch.randn(m, k, generator=g, device=device, dtype=dtype)
    return w.mul_(torch.rand(m, k, generator=g, device=device) >= sparsity)


def timed(fn, device: torch.device, repeats: int, warmup: int):
    """(wall seconds of each timed run, CPU seconds of this process in each, last result)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    out = None
    for _ in range(warmup):
        out = fn()
    sync()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times, out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def bench(m, k, sparsity, dtype, formats, device, repeats, warmup, seed=0) -> dict:
    w = random_pruned(m, k, sparsity, dtype, device, seed)
    dense_bytes = w.numel() * w.element_size()
    result = dict(shape=[m, k], dtype=str(dtype).removeprefix("torch."), target_sparsity=sparsity,
                  sparsity=float(1 - (w != 0).sum().item() / w.numel()), dense_bytes=dense_bytes, formats={})
    for fmt in formats:
        enc = timed(lambda: flashllm.compress(w, fmt), device, repeats, warmup)
        sw = enc[-1]
        dec = timed(sw.to_dense, device, repeats, warmup)
        dense = dec[-1]
        val = timed(sw.validate, device, repeats, warmup)
        exact = bool(torch.equal(dense, w))
        del dense
        row = dict(nbytes=sw.nbytes, bytes_per_element=sw.nbytes / w.numel(), round_trip_exact=exact)
        for step, (times, cpu_times, _) in (("encode", enc), ("decode", dec), ("validate", val)):
            median = statistics.median(times)
            row[step] = dict(seconds=times, min_s=min(times), median_s=median,
                             gbps_at_median=dense_bytes / median / 1e9, process_cpu_seconds=cpu_times)
        del enc, dec, val
        result["formats"][fmt] = row
        del sw
    return result


def format_table(result: dict) -> str:
    head = ("format", "B/elt", "encode s", "GB/s", "cpu s", "decode s", "GB/s", "cpu s",
            "validate s", "GB/s", "cpu s", "exact")
    lines = []
    for fmt, r in result["formats"].items():
        cells = [fmt, f"{r['bytes_per_element']:.3f}"]
        for step in ("encode", "decode", "validate"):
            cells += [f"{r[step]['median_s']:.3f}", f"{r[step]['gbps_at_median']:.3g}",
                      f"{statistics.median(r[step]['process_cpu_seconds']):.1f}"]
        lines.append((*cells, "yes" if r["round_trip_exact"] else "NO"))
    widths = [max(len(c) for c in col) for col in zip(head, *lines)]
    fmt_line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt_line(head), "  ".join("-" * w for w in widths), *map(fmt_line, lines)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="flashllm bench encode", description=__doc__.split("\n\n")[0])
    p.add_argument("--m", type=int, default=7168, help="rows of W (output features)")
    p.add_argument("--k", type=int, default=28672, help="columns of W (input features)")
    p.add_argument("--sparsity", type=float, default=0.8, help="fraction of zeros in the weights")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="value dtype")
    p.add_argument("--formats", nargs="+", choices=flashllm.FORMATS, default=list(flashllm.FORMATS), help="formats to time")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is a GPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs of each step (default: 5 GPU, 1 CPU)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    repeats = args.repeats or (5 if gpu else 1)
    load_before = os.getloadavg()
    print(f"encode benchmark: {args.m}x{args.k} {args.dtype} at {args.sparsity:.0%} sparsity on {device_name(device)}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in load_before)}")
    result = bench(args.m, args.k, args.sparsity, DTYPES[args.dtype], args.formats, device, repeats,
                   warmup=1 if gpu else 0)
    load_after = os.getloadavg()
    result.update(
        command="python -m flashllm.bench.encode " + " ".join(argv if argv is not None else sys.argv[1:]),
        device=device_name(device), device_type=device.type, torch=torch.__version__, flashllm=flashllm.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        repeats=repeats, warmup=1 if gpu else 0, loadavg_before=load_before, loadavg_after=load_after)
    print()
    print(format_table(result))
    print()
    print(f"s: wall seconds, median of {repeats} run(s); GB/s: dense input bytes ({result['dense_bytes'] / 1e9:.2f} GB)"
          " / wall seconds; cpu s: CPU seconds this process used (all threads, user + system)")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in load_after)}")
    if not gpu and (args.m, args.k, args.sparsity) == (7168, 28672, 0.8):
        for fmt, r in result["formats"].items():
            verdict = "within" if r["encode"]["median_s"] <= ENCODE_TARGET_S else "OVER"
            print(f"{fmt}: encode {r['encode']['median_s']:.1f} s, {verdict} the {ENCODE_TARGET_S:.0f} s CPU budget")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
