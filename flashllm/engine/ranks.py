"""The processes of a tensor-parallel run: joining torchrun's process group, relaunching through torchrun,
leaving cleanly, and timing the decode step's collectives."""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist


def init_tp(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK in the environment): NCCL
    with one GPU per local rank where CUDA is available, else gloo. Returns (rank, world, device)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", rank))
    cuda = torch.cuda.is_available() and backend != "gloo"
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), rank=rank, world_size=world,
                                **({"device_id": device} if cuda else {}))
    return rank, world, device


def finish_worker(code: int = 0):
    """End a torchrun worker: every rank meets at a barrier, the group is destroyed, output flushed, and the
    process leaves through os._exit.  A plain interpreter exit after gloo sometimes aborts in C++ static
    teardown ("terminate called without an active exception", about 1 run in 8 here) - after the work is done,
    but torchrun then reports the run as failed."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def in_worker() -> bool:
    """True inside a torchrun worker (RANK / WORLD_SIZE set in the environment)."""
    return "RANK" in os.environ or "WORLD_SIZE" in os.environ


def relaunch(module: str, argv: list[str], nproc: int) -> int:
    """Run `python -m module *argv` as `nproc` ranks through torch.distributed.run (torchrun --standalone),
    in the environment as it is (NCCL_* / TORCH_* pass through untouched). Returns 0, or 1 if a rank failed."""
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    try:
        run.main(["--standalone", f"--nproc-per-node={nproc}", "-m", module, *argv])
    except ChildFailedError as e:
        print(f"tensor-parallel run failed: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}",
              file=sys.stderr)
        return 1
    return 0


def worker_world(expected: int) -> tuple[int, int]:
    """(rank, world) of this torchrun worker, checking that world is the --tp the user asked for."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world != expected:
        raise ValueError(f"--tp {expected} inside a torchrun job of {world} processes")
    return rank, world


def time_all_reduce(shape, dtype: torch.dtype, device: torch.device, count: int, group=None,
                    reps: int = 20, warmup: int = 5) -> float:
    """Seconds that `count` all-reduces of a tensor of `shape` take (a decode step's collectives: two per
    layer on a [batch, dim] activation), median over `reps`; 0 when no process group is up (one rank).
    On a GPU the `count` all-reduces are captured in one CUDA graph, as the decode step runs them, and
    timed with CUDA events (eagerly, the host's ~20 us launch per collective would be measured instead);
    elsewhere perf_counter around eager calls."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return 0.0
    t = torch.zeros(shape, dtype=dtype, device=device)
    for _ in range(warmup):
        dist.all_reduce(t, group=group)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(count):
                dist.all_reduce(t, group=group)
        graph.replay()
    times = []
    for _ in range(reps):
        dist.barrier(group=group, **({"device_ids": [device.index]} if cuda and device.index is not None else {}))
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            for _ in range(count):
                dist.all_reduce(t, group=group)
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]
