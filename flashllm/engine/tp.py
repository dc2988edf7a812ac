"""Tensor parallelism over torch.distributed (NCCL on GPUs, gloo on CPUs): a rank's model, and the launcher.

How a model is split: `shard.py`. Three ways to get a rank's model:
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
slicing it and fuses it again after. Every rank computes the same logits (lm_head is replicated), so greedy
tokens agree without another collective; sampled tokens are broadcast from the group's first rank (Generator).
The processes themselves (joining torchrun's group, relaunching, timing collectives): `ranks.py`.

Launch (one process per GPU; rank/world from torchrun's environment):
    torchrun --standalone --nproc-per-node 2 -m flashllm.engine.tp --preset opt-30b --sparsity 0.8
    python -m flashllm.engine.tp --nproc 2 --preset opt-30b --sparsity 0.8      # the same, via torchrun
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..formats import compress
from ..models import checkpoint as ck
from ..models import compressed_tensors as ct
from .args import ModelArgs
from .fuse import fuse_projections
from .generate import Generator
from .load import adopt, check_loaded, hf_module_names, load_model, random_model, submodule
from .model import Transformer
from .ranks import finish_worker, in_worker, init_tp, relaunch, time_all_reduce, worker_world
from .shard import COLUMN, ROW, RandomShards, TPInfo, check_tp, shard_model, shard_slice

__all__ = ["load_sharded", "load_dense_then_shard", "main", "shard_model", "shard_slice", "COLUMN", "ROW", "TPInfo",
           "RandomShards", "init_tp", "finish_worker", "in_worker", "relaunch", "worker_world", "time_all_reduce"]


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
    dtype = ck.resolve_dtype(dtype)
    hf = ck.build_skeleton(config, dtype)

    # The skeleton's block linears become rank-sized meta linears; cuts: parameter -> (dim, range, full shape).
    names = hf_module_names(args)
    cuts, block, rows = {}, set(), []
    for i in range(args.n_layers):
        for name in COLUMN + ROW:
            theirs = names.get(f"layers.{i}.{name}")
            old = submodule(hf, theirs) if theirs else None
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

    def rank_part(target: str, t):
        """The loader's `part` hook: a full-size block-linear tensor (or compressed weight: decompressed,
        sliced, recompressed in its format) cut to this rank's slice; anything else as it is."""
        if target not in cuts or t is None or tuple(t.shape) != cuts[target][2]:
            return t
        dim, cut, _ = cuts[target]
        if isinstance(t, torch.Tensor):
            return t[cut] if dim == 0 else t[:, cut]
        dense = t.to_dense()
        return compress((dense[cut] if dim == 0 else dense[:, cut]).contiguous(), format=t.format, dtype=t.dtype)

    class RankShards(ck.Shards):
        """Reads a full-size block-linear tensor's rank slice straight from its file (safetensors get_slice)."""

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

    loader = None
    shards = RankShards(root)
    loader = ck.Loader(hf, shards, device, dtype, "auto" if kind == ck.PRODUCER else format, part=rank_part)
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
        target = submodule(model, ours)
        if target is not None:
            adopt(model, ours, target, submodule(hf, theirs), theirs)
    check_loaded(model)
    assert model.tp == info
    return (fuse_projections(model) if fuse else model).eval()


def load_dense_then_shard(path, rank: int, world: int, group=None, device=None, dtype=None, format: str = "auto",
                          sparsity_threshold: float | None = 0.3, fuse: bool = True):
    """The checkpoint loaded whole (dense block linears) on this rank, then sharded: every rank briefly
    holds the full model. The reference `load_sharded` is checked against; world=1's loader."""
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
