"""Compressed weight formats: Tiled-CSL (Flash-LLM), bitmap, pair bitmap and sliced ELL. Pure PyTorch, CPU or GPU."""

from __future__ import annotations

import torch

from . import bitmap, pairmap, sell, tiled_csl
from .base import FORMAT_IDS, FORMATS, SparseWeight, check_weight, codec_for, register_codec, value_dtype_for
from .concat import cat_rows
from .layout import BLOCK, to_blocks

for _name, _codec in {"tiled_csl": tiled_csl, "bitmap": bitmap, "sell": sell, "pairmap": pairmap}.items():
    register_codec(_name, _codec)
assert set(FORMATS) == set(FORMAT_IDS), "every format has a codec"


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


# From this sparsity on, "auto" takes sliced ELL - only for a caller that multiplies at most
# SELL_MAX_TOKENS tokens a call (max_tokens): its CUDA-core kernel pays per non-zero and per token, so it
# leads at decode sizes and falls behind the pair bitmap as N grows (docs/tuning.md, SELL_MIN_SPARSITY).
SELL_MIN_SPARSITY = 0.85
SELL_MAX_TOKENS = 16
# From this sparsity on, the pair bitmap: its decode costs half the bitmap's, which outweighs its ~50%
# more bytes (docs/tuning.md, PAIRMAP_MIN_SPARSITY).  Below it, the smaller of bitmap and Tiled-CSL.
PAIRMAP_MIN_SPARSITY = 0.65


def auto_format(weight: torch.Tensor, max_tokens: int | None = None) -> str:
    """The format `compress(weight, "auto", max_tokens=...)` picks (see SELL_MIN_SPARSITY and
    PAIRMAP_MIN_SPARSITY).  max_tokens: the most tokens (rows of x) one call will multiply, if known."""
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 (or None: unknown), got {max_tokens}")
    nz = int((weight != 0).sum())
    few_tokens = max_tokens is not None and max_tokens <= SELL_MAX_TOKENS
    if few_tokens and nz <= (1 - SELL_MIN_SPARSITY) * weight.numel():
        return "sell"
    if nz <= (1 - PAIRMAP_MIN_SPARSITY) * weight.numel():
        return "pairmap"
    sizes = predicted_nbytes(weight, ("bitmap", "tiled_csl"))
    return min(sizes, key=sizes.get)


def compress(weight: torch.Tensor, format: str = "auto", dtype: torch.dtype | None = None,
             max_tokens: int | None = None) -> SparseWeight:
    """Compress a weight [M, K] that already holds its zeros (compress never prunes).

    format: "tiled_csl", "bitmap", "sell", "pairmap" or "auto": the pair bitmap from 65% sparsity on,
    else the smaller of bitmap and Tiled-CSL; sliced ELL from 85% when max_tokens <= 16.
    dtype: the 16-bit dtype to store values in; fp16/bf16 weights keep theirs, fp32 needs it.
    max_tokens: the most tokens (rows of x) one call will multiply (e.g. the decode batch), if known;
    only "auto" reads it.
    """
    check_weight(weight)
    if format != "auto":
        codec_for(format)
    value_dtype = value_dtype_for(weight.dtype, dtype)
    weight = weight.detach()
    if format == "auto":
        format = auto_format(weight.to(value_dtype), max_tokens)
    codec = codec_for(format)
    # Encode slabs of whole 64-row blocks: the gathers then stay cache-sized (2-4x faster on a CPU)
    # and the temporaries stay small on a GPU.  Blocks are row-block-major, so slabs just concatenate.
    rows = max(BLOCK, CHUNK_ELEMENTS // max(1, weight.shape[1]) // BLOCK * BLOCK)
    if weight.shape[0] <= rows:
        return codec.encode(weight, value_dtype)
    parts = [codec.encode(weight[r:r + rows], value_dtype) for r in range(0, weight.shape[0], rows)]
    return cat_rows(parts)


CHUNK_ELEMENTS = 1 << 23

__all__ = ["SELL_MIN_SPARSITY", "SELL_MAX_TOKENS", "PAIRMAP_MIN_SPARSITY", "SparseWeight", "compress", "cat_rows",
           "codec_for", "predicted_nbytes", "auto_format", "FORMATS", "FORMAT_IDS"]
