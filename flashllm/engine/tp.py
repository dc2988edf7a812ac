"""Tensor parallelism, Megatron style, over torch.distributed (NCCL on GPUs, gloo on CPUs).

Each of G ranks holds 1/G of every block linear and runs the whole network on it:
  column-parallel (output rows split): q_proj, k_proj, v_proj, gate_proj, up_proj. Rank r keeps query
      heads [r*H/G, (r+1)*H/G) and KV heads [r*KV/G, (r+1)*KV/G), so every query head stays with its
      KV head, and FFN rows [r*F/G, (r+1)*F/G); its KV cache holds only its own KV heads.
  row-parallel (input columns split): o_proj, down_proj. Their partial outputs are summed by one
      all-reduce per sublayer (a forward hook on the attention and FFN modules, as gpt-fast's tp.py);
      their bias lives on rank 0 only, so it is added once.
Embeddings, norms, OPT's project_in/out and lm_head are replicated (simplest; lm_head is a few
percent of a big model): every rank computes the same logits, so greedy tokens agree without
another collective. Sampled tokens are broadcast from the group's first rank (see Generator).

Sharding comes before compression: a rank slices the dense weight and compresses only its slice,
so every shard is a valid SparseWeight of its own. Three ways to get a rank's model:
  shard_model(model, rank, world)                 an engine model with full weights (from_hf, load_model,
                                                  random_model): SparseLinears are decompressed, sliced
                                                  and recompressed in their format; dense linears holding
                                                  zeros are compressed per rank (sparsity_threshold)
  load_sharded(path, rank, world)                 a checkpoint, reading only this rank's slices (dense
                                                  safetensors via get_slice; compressed layers one at a time)
  random_model(preset, tp_rank=r, tp_world=G)     builds only this rank's slices; the weights do not depend
                                                  on G (drawn per KV-head-sized unit), so G=1 and G=2 runs
                                                  of one seed are the same network
G=1 is the plain engine: no process group, no hooks. Each rank fuses its own q/k/v and gate/up slices
(`fuse.py`) after the split: the builders above fuse last, and shard_model unfuses a fused block before
slicing it and fuses it again after.

Launch (one process per GPU; rank/world from torchrun's environment):
    torchrun --standalone --nproc-per-node 2 -m flashllm.engine.tp --preset opt-30b --sparsity 0.8
    python -m flashllm.engine.tp --nproc 2 --preset opt-30b --sparsity 0.8      # the same, via torchrun
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..nn import SparseLinear
from .args import ModelArgs
from .fuse import fuse_block, fuse_projections, unfuse_block

COLUMN = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "ffn.gate_proj", "ffn.up_proj")
ROW = ("attn.o_proj", "ffn.down_proj")


@dataclass(frozen=True)
class TPInfo:
    rank: int
    world: int
    group: object = None  # a ProcessGroup; None is the default group

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, group=self.group)
        return t

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Make every rank hold the group's first rank's `t` (in place)."""
        src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        dist.broadcast(t, src=src, group=self.group)
        return t


def check_tp(args: ModelArgs, world: int) -> None:
    if world < 1:
        raise ValueError(f"tp world size must be >= 1, got {world}")
    bad = [f"{n} {v}" for n, v in (("n_heads", args.n_heads), ("n_kv_heads", args.n_kv_heads),
                                     ("ffn_dim", args.ffn_dim)) if v % world]
    if bad:
        raise ValueError(f"tensor parallelism over {world} ranks needs it to divide {', '.join(bad)}")


def shard_slice(args: ModelArgs, name: str, rank: int, world: int) -> tuple[int, slice]:
    """(dim, index range) of rank's part of a block linear ('attn.q_proj', ...) in its [out, in] weight."""
    kind = name.rsplit(".", 1)[-1]
    heads = {"q_proj": args.n_heads, "o_proj": args.n_heads, "k_proj": args.n_kv_heads, "v_proj": args.n_kv_heads}
    width = heads[kind] * args.head_dim if kind in heads else args.ffn_dim
    part = width // world
    return (1 if kind in ("o_proj", "down_proj") else 0), slice(rank * part, (rank + 1) * part)


def shard_model(model, rank: int, world: int, group=None, format: str = "auto",
                sparsity_threshold: float | None = 0.3):
    """Cut `model` (full weights, or a meta-device skeleton) down to rank's part, in place; returns it.

    A SparseLinear is decompressed, sliced and recompressed in its own format and value dtype; a dense
    nn.Linear keeps its slice dense unless at least `sparsity_threshold` of the slice is zeros (then it
    is compressed in `format`; None: never). The full weights are dropped as each linear is replaced,
    so peak memory is the full model plus one layer. A block whose projections were fused is unfused,
    sliced and fused again (a compressed fused linear is decompressed and recompressed per part on the
    way). world=1 returns the model as it is.
    """
    args = model.args
    check_tp(args, world)
    if world == 1:
        return model
    if getattr(model, "tp", None) is not None:
        raise ValueError(f"model is already sharded ({model.tp})")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside [0, {world})")
    info = TPInfo(rank, world, group)
    reduce_hook = _AllReduce(info)
    for block in model.layers:
        was_fused = unfuse_block(block)
        for name in COLUMN + ROW:
            parent_name, _, child = name.rpartition(".")
            parent = block.get_submodule(parent_name)
            linear = getattr(parent, child)
            if linear is not None:
                setattr(parent, child, _shard_linear(linear, *shard_slice(args, name, rank, world), rank,
                                                     format, sparsity_threshold))
        block.attn.n_heads //= world
        block.attn.n_kv_heads //= world
        if was_fused:
            fuse_block(block)
        block.attn.register_forward_hook(reduce_hook)
        block.ffn.register_forward_hook(reduce_hook)
    model.tp = info
    return model


class _AllReduce:
    """Forward hook summing a row-parallel sublayer's partial outputs over the group (in place)."""

    def __init__(self, info: TPInfo):
        self.info = info

    def __call__(self, module, inputs, output):
        return self.info.all_reduce(output)


def _shard_linear(linear: nn.Module, dim: int, cut: slice, rank: int, format: str, threshold):
    sparse = isinstance(linear, SparseLinear)
    w = linear.weight.to_dense() if sparse else linear.weight.detach()
    w = w[cut] if dim == 0 else w[:, cut]
    bias = linear.bias
    if bias is not None:  # column-parallel: slice it; row-parallel: rank 0 adds it, after nothing else
        bias = _param(bias.detach()[cut].clone()) if dim == 0 else (bias if rank == 0 else None)
    if w.device.type == "meta":  # a skeleton (random_model): only the shapes matter
        return nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device="meta")
    if sparse:
        return SparseLinear.from_dense(w.contiguous(), bias, format=linear.weight.format, dtype=linear.weight.dtype)
    if threshold is not None and float((w == 0).float().mean()) >= threshold:
        return SparseLinear.from_dense(w.contiguous(), bias, format=format)
    out = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    out.weight = _param(w.contiguous().clone())
    out.bias = bias
    return out


def _param(t: torch.Tensor) -> nn.Parameter:
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)


# ------------------------------------------------------------------------------ random weights, per rank

class RandomShards:
    """Draws rank's slice of each block linear so that it does not depend on G: the full weight is cut
    into `units` equal parts along the split dim (one per KV head for attention; gcd(F, KV) for the
    FFN), each drawn from its own generator seeded by (seed, layer, linear, unit). Any valid G takes
    whole units, so a rank never draws more than its own slice, and G=1 draws the same full matrix."""

    KINDS = {name.rsplit(".", 1)[-1]: i for i, name in enumerate(COLUMN + ROW)}

    def __init__(self, args: ModelArgs, rank: int, world: int, seed: int, std: float, device, dtype):
        check_tp(args, world)
        self.args, self.rank, self.world = args, rank, world
        self.seed, self.std, self.device, self.dtype = seed, std, torch.device(device), dtype

    def __call__(self, name: str, sparsity: float) -> torch.Tensor:
        """name 'layers.{i}.attn.q_proj' etc. -> rank's dense slice [out/G or out, in or in/G], pruned
        by a uniformly random mask of density 1 - sparsity."""
        _, layer, sub, kind = name.split(".")
        args = self.args
        units = args.n_kv_heads if sub == "attn" else math.gcd(args.ffn_dim, args.n_kv_heads)
        full = {"q_proj": args.n_heads * args.head_dim, "o_proj": args.n_heads * args.head_dim,
                "k_proj": args.n_kv_heads * args.head_dim, "v_proj": args.n_kv_heads * args.head_dim}
        width = full.get(kind, args.ffn_dim)
        other = args.dim
        dim = 1 if kind in ("o_proj", "down_proj") else 0
        per = units // self.world
        parts = []
        for u in range(self.rank * per, (self.rank + 1) * per):
            gen = torch.Generator(self.device).manual_seed(_mix(self.seed, int(layer), self.KINDS[kind], u))
            shape = (width // units, other) if dim == 0 else (other, width // units)
            w = torch.randn(shape, device=self.device, dtype=self.dtype, generator=gen).mul_(self.std)
            if sparsity > 0:
                w.mul_(torch.rand(shape, device=self.device, generator=gen) >= sparsity)
            parts.append(w)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _mix(*xs: int) -> int:
    h = 0x243F6A8885A308D3
    for x in xs:
        h = ((h ^ (x + 0x9E3779B97F4A7C15)) * 0x100000001B3) % (1 << 63)
    return h


# --------------------------------------------------------------------------------- processes, launcher

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


def load_sharded(path, rank: int, world: int, group=None, device=None, dtype=None, format: str = "auto",
                 sparsity_threshold: float | None = 0.3, fuse: bool = True):
    """This rank's part of a checkpoint directory, read rank-locally: a dense (or dense-with-zeros)
    checkpoint's block linears are read slice by slice from safetensors (`get_slice`), so no rank ever
    holds another rank's part; a flashllm compressed layer is read whole, decompressed, sliced and
    recompressed in its own format, one layer at a time; a compressed-tensors bitmask layer is decoded
    whole, then sliced. A block-linear slice with at least `sparsity_threshold` zeros is compressed in
    `format` (None: never); everything else (embeddings, norms, lm_head) is replicated. Gives the model
    `shard_model(load_model(path, sparsity_threshold=None), ...)` gives, without the full dense model."""
    if world == 1:
        return load_dense_then_shard(path, rank, world, group, device, dtype, format, sparsity_threshold, fuse)
    from pathlib import Path

    from ..models import checkpoint as ck
    from ..models import compressed_tensors as ct
    from .load import _adopt, _check_loaded, _get, hf_module_names
    from .model import Transformer

    root = Path(path)
    if not (root / ck.CONFIG_NAME).is_file():
        raise ck.CheckpointError(f"{root}: not a checkpoint directory (no {ck.CONFIG_NAME})")
    config_dict = ck.read_json(root / ck.CONFIG_NAME)
    kind = ck.checkpoint_kind(config_dict)
    config = ck.load_config(root)
    args = ModelArgs.from_hf_config(config)
    check_tp(args, world)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside [0, {world})")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = ck._resolve_dtype(dtype)
    hf = ck.build_skeleton(config, dtype)

    # The skeleton's block linears become rank-sized meta linears; cuts: parameter -> (dim, range, full shape).
    names = hf_module_names(args)
    cuts, block, rows = {}, set(), []
    for i in range(args.n_layers):
        for name in COLUMN + ROW:
            theirs = names.get(f"layers.{i}.{name}")
            old = _get(hf, theirs) if theirs else None
            if old is None:
                continue
            dim, cut = shard_slice(args, name, rank, world)
            out_f, in_f = old.out_features, old.in_features
            shape = (cut.stop - cut.start, in_f) if dim == 0 else (out_f, cut.stop - cut.start)
            parent, _, child = theirs.rpartition(".")
            setattr(hf.get_submodule(parent), child, nn.Linear(shape[1], shape[0], bias=old.bias is not None,
                                                               device="meta", dtype=old.weight.dtype))
            cuts[theirs + ".weight"] = (dim, cut, (out_f, in_f))
            if dim == 0 and old.bias is not None:
                cuts[theirs + ".bias"] = (0, cut, (out_f,))
            block.add(theirs)
            if dim == 1 and rank != 0:
                rows.append(theirs)  # row-parallel bias: added on rank 0 only

    def slice_full(target: str, t):
        """t sliced to this rank when it is a full-size block-linear tensor; else t."""
        if target not in cuts or t is None:
            return t
        dim, cut, full = cuts[target]
        if tuple(t.shape) != full:
            return t
        return t[cut] if dim == 0 else t[:, cut]

    class RankShards(ck.Shards):
        def get(self, name):
            target = loader.model_name(name) if loader is not None else None
            if target not in cuts or tuple(self.shape(name)) != cuts[target][2]:
                return super().get(name)
            dim, cut, _ = cuts[target]
            path = self.location[name]
            try:
                part = self._open(path).get_slice(name)
                return (part[cut.start:cut.stop] if dim == 0 else part[:, cut.start:cut.stop]).contiguous()
            except Exception as e:
                raise ck.CheckpointError(f"{path}: cannot read tensor {name!r}: {e}") from e

    class RankLoader(ck._Loader):
        def install(self, module_name, weight, source):
            full = cuts.get(module_name + ".weight")
            if full is not None and tuple(weight.shape) == full[2]:  # a whole compressed layer: slice it
                dense = slice_full(module_name + ".weight", weight.to_dense())
                from ..formats import compress
                weight = compress(dense.contiguous(), format=weight.format, dtype=weight.dtype)
            super().install(module_name, weight, source)

        def _dense_item(self, name, read, source, eligible, threshold, unexpected):
            target = self.model_name(name)
            super()._dense_item(name, lambda: slice_full(target, read()), source, eligible, threshold, unexpected)

    loader = None
    shards = RankShards(root)
    loader = RankLoader(hf, shards, device, dtype, "auto" if kind == ck.PRODUCER else format)
    if kind == ck.PRODUCER:
        loader.load_flashllm(config_dict[ck.SPARSITY_KEY], root / ck.CONFIG_NAME)
    else:
        loader.load_dense(kind == ct.BITMASK, lambda name, module: sparsity_threshold is not None and name in block,
                          sparsity_threshold)
    loader.finish()
    for theirs in rows:
        hf.get_submodule(theirs).bias = None

    info = TPInfo(rank, world, group)
    with torch.device("meta"):
        model = Transformer(args)
    shard_model(model, rank, world, group)  # the skeleton: rank-local shapes, heads, all-reduce hooks
    for ours, theirs in names.items():
        target = _get(model, ours)
        if target is not None:
            _adopt(model, ours, target, _get(hf, theirs), theirs)
    _check_loaded(model)
    assert model.tp == info
    return (fuse_projections(model) if fuse else model).eval()


def load_dense_then_shard(path, rank: int, world: int, group=None, device=None, dtype=None, format: str = "auto",
                          sparsity_threshold: float | None = 0.3, fuse: bool = True):
    """The checkpoint loaded whole (dense block linears) on this rank, then sharded: every rank briefly
    holds the full model. The reference `load_sharded` is checked against; world=1's loader."""
    from .load import load_model
    model = shard_model(load_model(path, device=device, dtype=dtype, sparsity_threshold=None, fuse=False),
                        rank, world, group, format=format, sparsity_threshold=sparsity_threshold)
    return fuse_projections(model) if fuse else model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m flashllm.engine.tp", description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=None, help="start this many ranks through torchrun")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="random weights of this shape (built per rank)")
    src.add_argument("--model", help="checkpoint directory (loaded dense, then sharded)")
    p.add_argument("--sparsity", type=float, default=0.0)
    p.add_argument("--format", default="auto")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cuda-graph", action="store_true")
    ns = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if ns.nproc and "LOCAL_RANK" not in os.environ:
        from torch.distributed import run
        rest = [a for i, a in enumerate(argv) if a != "--nproc" and not a.startswith("--nproc=")
                and not (i and argv[i - 1] == "--nproc")]
        run.main(["--standalone", f"--nproc-per-node={ns.nproc}", "-m", "flashllm.engine.tp", *rest])
        return

    from .generate import Generator
    from .load import random_model
    rank, world, device = init_tp()
    started = time.perf_counter()
    if ns.preset:
        model, report = random_model(ns.preset, ns.sparsity, ns.format, device=device, seed=ns.seed,
                                     n_layers=ns.layers, tp_rank=rank, tp_world=world)
    else:
        model, report = load_sharded(ns.model, rank, world, device=device, format=ns.format), None
    vocab = model.args.vocab_size
    prompts = torch.randint(4, vocab, (ns.batch, ns.prompt_len), generator=torch.Generator().manual_seed(ns.seed))
    gen = Generator(model, ns.batch, ns.prompt_len + ns.new_tokens, cuda_graph=False if ns.no_cuda_graph else None)
    gen.generate(prompts, min(ns.new_tokens, 4))  # warm-up: graphs captured, NCCL communicators up
    out = gen.generate(prompts, ns.new_tokens)
    if rank == 0:
        print(f"tp {world} on {device.type}: built in {time.perf_counter() - started:.1f} s"
              + (f" ({report})" if report else "") + f"; rank 0 holds {model.weight_nbytes() / 1e9:.2f} GB")
        print(f"decode {out.ms_per_step:.2f} ms/step, {out.tokens_per_second:.1f} tokens/s, "
              f"{out.tokens_per_second / world:.1f} tokens per GPU-second")
        print("tokens[0]:", out.tokens[0].tolist())
    if world > 1:
        finish_worker()


if __name__ == "__main__":
    main()
