"""Megatron-style tensor parallelism: which part of each block linear a rank holds, and cutting a model down to it.

Each of G ranks holds 1/G of every block linear and runs the whole network on it:
  column-parallel (output rows split): q_proj, k_proj, v_proj, gate_proj, up_proj. Rank r keeps query
      heads [r*H/G, (r+1)*H/G) and KV heads [r*KV/G, (r+1)*KV/G), so every query head stays with its
      KV head, and FFN rows [r*F/G, (r+1)*F/G); its KV cache holds only its own KV heads.
  row-parallel (input columns split): o_proj, down_proj. Their partial outputs are summed by one
      all-reduce per sublayer (a forward hook on the attention and FFN modules, as gpt-fast's tp.py);
      their bias lives on rank 0 only, so it is added once.
Embeddings, norms, OPT's project_in/out and lm_head are replicated. Sharding comes before compression: a rank
slices the dense weight and compresses only its slice, so every shard is a valid SparseWeight of its own.
`RandomShards` draws a rank's slices of random weights so that they do not depend on G.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..nn import SparseLinear
from .args import ModelArgs
from .fuse import fuse_block, unfuse_block

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
