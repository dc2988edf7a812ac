"""`flashllm bench overhead`: host time of one eager call, F.linear against flashllm.spmm and SparseLinear.

An eager call's host time is what a host-bound decode loop (transformers' generate) pays per layer: argument
checks, planning, allocation and the kernel launches, not the kernel.  Each repeat times `--calls` calls
back to back with time.perf_counter, after a synchronize, few enough that the launch queue never fills (so
the GPU's pace stays out of it); the median over `--repeats` is reported in microseconds.  The target
(issue 21): flashllm.spmm at most F.linear + 5 us.  On a CPU it times the CPU path the same way (there host
time is the whole time).
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

TARGET_US = 5.0  # flashllm.spmm's allowance over F.linear


def host_us(fn, calls: int, repeats: int, sync) -> float:
    """Median over `repeats` of the host microseconds per call of `calls` back-to-back calls."""
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
        sync()
    return statistics.median(times)


def weight(m: int, k: int, sparsity: float, dtype, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g) * (torch.rand(m, k, generator=g) >= sparsity)
    return w.to(device=device, dtype=dtype)


def row(fmt: str, m: int, k: int, n: int, sparsity: float, dtype, device, calls: int, repeats: int) -> dict:
    dense = weight(m, k, sparsity, dtype, device)
    sw = flashllm.compress(dense, fmt)
    layer = flashllm.SparseLinear(sw)
    x = torch.randn(n, k, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():  # as transformers' generate runs
        linear = host_us(lambda: F.linear(x, dense), calls, repeats, sync)
        spmm = host_us(lambda: flashllm.spmm(x, sw), calls, repeats, sync)
        module = host_us(lambda: layer(x), calls, repeats, sync)
    return {"format": sw.format, "M": m, "K": k, "N": n, "sparsity": sparsity, "linear_us": linear,
            "spmm_us": spmm, "sparse_linear_us": module, "spmm_over_linear_us": spmm - linear,
            "within_target": spmm - linear <= TARGET_US}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="flashllm bench overhead", description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="4096x4096", help="MxK of the weight (default 4096x4096)")
    p.add_argument("--ns", default="1,8,32,128", help="token counts (default 1,8,32,128)")
    p.add_argument("--formats", default="bitmap:0.5,pairmap:0.8,sell:0.9",
                   help="format:sparsity pairs (default bitmap:0.5,pairmap:0.8,sell:0.9)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--calls", type=int, default=200, help="calls per timed repeat (default 200)")
    p.add_argument("--repeats", type=int, default=21, help="timed repeats, median taken (default 21)")
    p.add_argument("--out", default=".", help="folder (or .json path) for the JSON result")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, a.dtype)
    m, k = (int(v) for v in a.shape.lower().split("x"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"host time per eager call, {m}x{k} {a.dtype}, on {name} (median of {a.repeats} x {a.calls} calls)")
    print("| format | sparsity | N | F.linear us | flashllm.spmm us | SparseLinear us | spmm - linear us |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for spec in a.formats.split(","):
        fmt, sparsity = spec.split(":")
        for n in (int(v) for v in a.ns.split(",")):
            r = row(fmt, m, k, n, float(sparsity), dtype, device, a.calls, a.repeats)
            rows.append(r)
            print(f"| {r['format']} | {r['sparsity']:.0%} | {n} | {r['linear_us']:.1f} | {r['spmm_us']:.1f} | "
                  f"{r['sparse_linear_us']:.1f} | {r['spmm_over_linear_us']:+.1f}"
                  f"{'' if r['within_target'] else ' (over ' + str(TARGET_US) + ')'} |", flush=True)
    out = Path(a.out)
    if out.suffix != ".json":
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"overhead_{device.type}_{date.today()}.json"
    out.write_text(json.dumps({"device": name, "torch": torch.__version__, "dtype": a.dtype, "calls": a.calls,
                               "repeats": a.repeats, "target_us": TARGET_US, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
