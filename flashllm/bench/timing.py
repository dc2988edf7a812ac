"""GPU timing: CUDA events around CUDA-graph replays of many
launches over rotating weight copies (so no weight sits in L2), medians over replays."""

from __future__ import annotations

import statistics

import torch


def copies_to_defeat_l2(nbytes: int, device=None) -> int:
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    return max(2, min(64, -(-3 * l2 // max(1, nbytes))))


def time_graph(fns: list, launches: int = 60, replays: int = 7) -> float:
    """Median microseconds per call, cycling through `fns` (one per weight copy)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:  # warm-up: JIT compile, allocator, cuBLAS handles
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(launches):
            fns[i % len(fns)]()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / launches)
    del g
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy, bytes read + written per second (the anchors' ceiling), eager median."""
    a = torch.empty(nbytes // 2, dtype=torch.float16, device="cuda")
    b = torch.empty_like(a)
    a.normal_()
    b.copy_(a)
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        b.copy_(a)
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1e-3)
    return 2 * nbytes / statistics.median(times)
