"""Fuse the projections of a block that read the same input into one linear each: attention q/k/v into
`attn.qkv_proj`, a gated FFN's gate/up into `ffn.gate_up_proj`. A decode step then launches one matmul per
group instead of three or two; the forward splits the output into views.

Models are fused as the last step of building them, so loading (the name table in `load.py`) and
tensor-parallel slicing (`tp.py`) only ever see the unfused names. A group whose parts cannot be stacked
stays unfused, and the forward runs it as before: dense and compressed parts mixed, differing formats,
dtypes or devices, or a compressed part other than the last whose rows are not whole 64-row blocks
(see `flashllm.formats.cat_rows`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..formats import cat_rows
from ..nn import SparseLinear

# (sublayer, fused name, the names it replaces, in output order)
GROUPS = (("attn", "qkv_proj", ("q_proj", "k_proj", "v_proj")),
          ("ffn", "gate_up_proj", ("gate_proj", "up_proj")))


def fuse_projections(model: nn.Module) -> nn.Module:
    """Fuse every block's groups that can be fused, in place (the unfused linears are dropped); returns model."""
    for block in model.layers:
        fuse_block(block)
    return model


def fuse_block(block: nn.Module) -> None:
    for sub, fused_name, names in GROUPS:
        fuse_group(getattr(block, sub), fused_name, names)


def fuse_group(module: nn.Module, fused_name: str, names: tuple[str, ...]) -> bool:
    """Replace module's linears `names` by one linear `fused_name`; False where they cannot be stacked."""
    parts = [getattr(module, n) for n in names]
    if getattr(module, fused_name) is not None or any(p is None for p in parts):
        return False  # already fused, or no such group (OPT's FFN has no gate)
    fused = stack_linears(parts)
    if fused is None:
        return False
    for n in names:
        setattr(module, n, None)
    setattr(module, fused_name, fused)
    return True


def unfuse_block(block: nn.Module) -> bool:
    """Split a block's fused linears back into their parts, in place; True if there were any."""
    found = False
    for sub, fused_name, names in GROUPS:
        module = getattr(block, sub)
        fused = getattr(module, fused_name)
        if fused is None:
            continue
        for n, part in zip(names, split_linear(fused, module.fused_sizes)):
            setattr(module, n, part)
        setattr(module, fused_name, None)
        found = True
    return found


def fuse_like(model: nn.Module, reference: nn.Module) -> nn.Module:
    """Fuse the groups of `model` (e.g. a meta-device skeleton) that are fused in `reference`."""
    for block, ref in zip(model.layers, reference.layers):
        for sub, fused_name, names in GROUPS:
            if getattr(getattr(ref, sub), fused_name) is not None and not fuse_group(getattr(block, sub),
                                                                                    fused_name, names):
                raise ValueError(f"cannot fuse {sub}.{fused_name} as the reference model has it")
    return model


def stack_linears(parts: list[nn.Module]) -> nn.Module | None:
    """One linear whose output is the parts' outputs concatenated, or None where they do not stack."""
    if all(isinstance(p, SparseLinear) for p in parts):
        try:
            weight = cat_rows([p.weight for p in parts])
        except ValueError:
            return None
        return SparseLinear(weight, _stacked_bias(parts))
    if not all(type(p) is nn.Linear for p in parts):
        return None
    weights = [p.weight for p in parts]
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
        return None
    fused = nn.Linear(weights[0].shape[1], sum(w.shape[0] for w in weights), bias=False, device="meta")
    fused.weight = nn.Parameter(torch.cat([w.detach() for w in weights]), requires_grad=False)
    fused.bias = _stacked_bias(parts)
    return fused


def _stacked_bias(parts: list[nn.Module]) -> nn.Parameter | None:
    biases = [p.bias for p in parts]
    present = [b for b in biases if b is not None]
    if not present:
        return None
    like = present[0]
    full = [b.detach() if b is not None else like.new_zeros(p.out_features) for p, b in zip(parts, biases)]
    return nn.Parameter(torch.cat(full), requires_grad=False)


def split_linear(fused: nn.Module, sizes: list[int]) -> list[nn.Module]:
    """The parts of a fused linear: dense ones are views of its weight; compressed ones are decompressed
    and recompressed part by part, in the same format and value dtype."""
    biases = fused.bias.detach().split(sizes) if fused.bias is not None else [None] * len(sizes)
    if isinstance(fused, SparseLinear):
        w = fused.weight
        return [SparseLinear.from_dense(rows, b, format=w.format, dtype=w.dtype)
                for rows, b in zip(w.to_dense().split(sizes), biases)]
    parts = []
    for rows, b in zip(fused.weight.detach().split(sizes), biases):
        part = nn.Linear(rows.shape[1], rows.shape[0], bias=False, device="meta")
        part.weight = nn.Parameter(rows, requires_grad=False)
        part.bias = nn.Parameter(b, requires_grad=False) if b is not None else None
        parts.append(part)
    return parts
