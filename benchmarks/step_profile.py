"""Device aid: where one decode step's time goes (CUDA kernels by name, torch profiler), OPT-30B shape.

usage: python benchmarks/step_profile.py [layers] [sparsity] [format] [batch]
Prints GPU microseconds per step and per layer by kernel name, so the GEMMs can be told from the rest.
"""
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from flashllm.engine import random_model

layers = int(sys.argv[1]) if len(sys.argv) > 1 else 8
sparsity = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
fmt = sys.argv[3] if len(sys.argv) > 3 else "tiled_csl"
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 8
model, _ = random_model("opt-30b", sparsity=sparsity, format=fmt, device="cuda", n_layers=layers)
model.setup_caches(batch, 192)
tokens = torch.randint(0, 1000, (batch, 1), device="cuda")
starts = torch.zeros(batch, dtype=torch.int64, device="cuda")
slot = torch.tensor([128], device="cuda")
with torch.no_grad():
    for _ in range(3):
        model(tokens, slot, starts, 192)
    torch.cuda.synchronize()
    steps = 5
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            model(tokens, slot, starts, 192)
        torch.cuda.synchronize()
per = defaultdict(float)
count = defaultdict(int)
for e in prof.events():
    if e.device_type == torch.autograd.DeviceType.CUDA:
        per[e.name[:90]] += e.device_time / steps
        count[e.name[:90]] += 1
total = sum(per.values())
print(f"opt-30b x{layers} layers, sparsity {sparsity}, {fmt}, batch {batch}: {total:.0f} us of kernels per step "
      f"({total / layers:.1f} per layer)")
for name, us in sorted(per.items(), key=lambda kv: -kv[1])[:25]:
    print(f"  {us:8.1f} us  {count[name] / steps:5.0f}/step  {name}")
