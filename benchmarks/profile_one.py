"""Device aid: one kernel launch of a paper shape, for ncu and SASS inspection (env SHAPE=MxK)."""
import os
import sys

import torch

import flashllm
from flashllm.kernels import dispatch

fmt, s, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
m, k = map(int, os.environ.get("SHAPE", "27648x9216").split("x"))
w = torch.randn(m, k, device="cuda").half()
w = w * (torch.rand(m, k, device="cuda") >= s)
sw = flashllm.compress(w, fmt)
x = torch.randn(n, k, device="cuda").half()
over = dict(a.split("=") for a in sys.argv[4:])
over = {key: int(v) for key, v in over.items()}
for _ in range(3):
    y = dispatch.spmm_kernel(x, sw, **over)
torch.cuda.synchronize()
print("cfg", dispatch.config_for(sw, n))
