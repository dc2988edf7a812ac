"""Compressed weight formats: Tiled-CSL (Flash-LLM), bitmap, pair bitmap and sliced ELL. Pure PyTorch, CPU or GPU."""

from __future__ import annotations

import torch

from . import bitmap, pairmap, sell, tiled_csl
from .base import FORMATS, SparseWeight, check_weight, value_dtype_for
from .concat import cat_rows
from .layout import BLOCK, to_blocks

_CODECS = {"tiled_csl": tiled_csl, "bitmap": bitmap, "sell": sell, "pairmap": pairmap}


def codec_for(name: str):
    try:
        return _CODECS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; expected one of {FORMATS} or 'auto'") from None


def predicted_nbytes(weight: torch.Tensor, formats=FORMATS) -> dict[str, int]:
    """Exact size each format would take for this weight, from per-block (per-row) non-zero counts."""
    nz = weight != 0
    sizes = {}
    if {"bitmap", "tiled_csl", "pairmap"} & set(formats):
        nz_blocks = to_blocks(nz)
        ptr = 8 * (nz_blocks.shape[0] + 1)  # the int64 block offsets
        counts = nz_blocks.sum(1)
        sizes["bitmap"] = int(bitmap.block_bytes(counts).sum()) + ptr
        sizes["tiled_csl"] = 4 * int(tiled_csl.block_words(counts).sum()) + ptr
        if "pairmap" in formats:
            sizes["pairmap"] = int(pairmap.block_bytes(pairmap.pair_counts(nz_blocks)).sum()) + ptr
    if "sell" in formats:
        sizes["sell"] = sell.predicted_nbytes(nz)
    return {f: sizes[f] for f in formats}


# From this sparsity on, "auto" takes sliced ELL: its CUDA-core kernel is the fastest at decode sizes
# (N <= 16) there - on an H100, 1.2-1.6x Tiled-CSL at 90% (benchmarks/results/sell_probe_*).
SELL_MIN_SPARSITY = 0.85
# Below that, from this sparsity on, the pair bitmap: its decode costs half the bitmap's, which outweighs
# its ~50% more bytes (H200, 12 paper shapes, N <= 32: 1.42x / 1.60x cuBLAS at 70 / 80% against the
# bitmap's 1.12x / 1.14x; level at 60%, slower at 50%).  Below it, the smaller of bitmap and Tiled-CSL.
PAIRMAP_MIN_SPARSITY = 0.65


def auto_format(weight: torch.Tensor) -> str:
    """The format `compress(weight, "auto")` picks (see SELL_MIN_SPARSITY, PAIRMAP_MIN_SPARSITY)."""
    nz = int((weight != 0).sum())
    if nz <= (1 - SELL_MIN_SPARSITY) * weight.numel():
        return "sell"
    if nz <= (1 - PAIRMAP_MIN_SPARSITY) * weight.numel():
        return "pairmap"
    sizes = predicted_nbytes(weight, ("bitmap", "tiled_csl"))
    return min(sizes, key=sizes.get)


def compress(weight: torch.Tensor, format: str = "auto", dtype: torch.dtype | None = None) -> SparseWeight:
    """Compress a weight [M, K] that already holds its zeros (compress never prunes).

    format: "tiled_csl", "bitmap", "sell", "pairmap" or "auto": sliced ELL from 85% sparsity on (the
    fastest at decode sizes there), the pair bitmap from 65%, else the smaller of bitmap and Tiled-CSL.
    dtype: the 16-bit dtype to store values in; fp16/bf16 weights keep theirs, fp32 needs it.
    """
    check_weight(weight)
    if format != "auto":
        codec_for(format)
    value_dtype = value_dtype_for(weight.dtype, dtype)
    weight = weight.detach()
    if format == "auto":
        format = auto_format(weight.to(value_dtype))
    codec = codec_for(format)
    # Encode slabs of whole 64-row blocks: the gathers then stay cache-sized (2-4x faster on a CPU)
    # and the temporaries stay small on a GPU.  Blocks are row-block-major, so slabs just concatenate.
    rows = max(BLOCK, CHUNK_ELEMENTS // max(1, weight.shape[1]) // BLOCK * BLOCK)
    if weight.shape[0] <= rows:
        return codec.encode(weight, value_dtype)
    parts = [codec.encode(weight[r:r + rows], value_dtype) for r in range(0, weight.shape[0], rows)]
    return cat_rows(parts)


CHUNK_ELEMENTS = 1 << 23

__all__ = ["SELL_MIN_SPARSITY", "PAIRMAP_MIN_SPARSITY", "SparseWeight", "compress", "cat_rows", "codec_for", "predicted_nbytes", "auto_format", "FORMATS"]
