"""`flashllm bench step`: where one decode step's GPU time goes, by kernel name (torch profiler).

A random-weight model of a preset's shapes (default OPT-30B, 8 of its layers), one decode step of `--batch`
sequences at position 128 of a 192-slot cache, run eagerly (no CUDA graph, so every kernel shows), timed over
`--steps` steps after three warm-up steps.  Prints GPU microseconds per step and per layer by kernel, so the
SpMM / GEMM kernels can be told from attention, norms, the split-K reduce and the KV-cache writes.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch


def main(argv=None) -> int:
    from flashllm.engine import random_model
    from flashllm.engine.presets import PRESETS

    ap = argparse.ArgumentParser(prog="flashllm bench step", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="opt-30b", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, default=8, help="layers built (default 8)")
    ap.add_argument("--sparsity", type=float, default=0.0, help="0: dense nn.Linear layers (default)")
    ap.add_argument("--format", default="auto", help="compressed format of the sparse layers (default auto)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="profiled steps (default 5)")
    ap.add_argument("--top", type=int, default=25, help="kernels listed (default 25)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("flashllm bench step needs a CUDA GPU")
    from torch.profiler import ProfilerActivity, profile

    model, _ = random_model(a.model, sparsity=a.sparsity, format=a.format, device="cuda", n_layers=a.layers,
                            max_tokens=a.batch)
    model.setup_caches(a.batch, 192)
    tokens = torch.randint(0, 1000, (a.batch, 1), device="cuda")
    starts = torch.zeros(a.batch, dtype=torch.int64, device="cuda")
    slot = torch.tensor([128], device="cuda")
    with torch.no_grad():
        for _ in range(3):
            model(tokens, slot, starts, 192)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(a.steps):
                model(tokens, slot, starts, 192)
            torch.cuda.synchronize()
    per, count = defaultdict(float), defaultdict(int)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name[:90]] += e.device_time / a.steps
            count[e.name[:90]] += 1
    total = sum(per.values())
    print(f"{a.model} x{a.layers} layers, sparsity {a.sparsity:.0%} ({a.format}), batch {a.batch}, "
          f"{torch.cuda.get_device_name()}: {total:.0f} us of kernels per step ({total / a.layers:.1f} per layer)")
    for name, us in sorted(per.items(), key=lambda kv: -kv[1])[:a.top]:
        print(f"  {us:8.1f} us  {us / a.layers:7.1f} per layer  {count[name] / a.steps:5.0f}/step  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
