"""Stack compressed weights along M (output rows) without decompressing them.

Every format stores its records row-major as one payload tensor plus an offset array in elements of
the payload (bitmap: bytes per 64x64 block; Tiled-CSL: words per block; sell: entries per 32-row slice
and K chunk, so a 64-row block is two slices). Stacking whole row
blocks is therefore concatenating the payloads and shifting each part's offsets by the payload before it.
"""

from __future__ import annotations

import torch

from .base import SparseWeight, codec_for
from .layout import BLOCK


def cat_rows(weights: list[SparseWeight]) -> SparseWeight:
    """The weight [sum of M, K] whose rows are those of `weights` in order (like torch.cat along dim 0).

    Every part but the last must have M % 64 == 0 (a part's last row block must not be shared with the
    next part), and all must have the same K, format, dtype and device; else ValueError.
    """
    _check_stackable(weights)
    first = weights[0]
    payload_key, ptr_key = codec_for(first.format).TENSORS
    payloads, ptrs, offset = [], [], 0
    for w in weights:
        payload = w.tensors[payload_key]
        payloads.append(payload)
        ptrs.append(w.tensors[ptr_key][:-1] + offset)
        offset += payload.numel()
    ptrs.append(torch.tensor([offset], dtype=torch.int64, device=first.device))
    shape = (sum(w.shape[0] for w in weights), first.shape[1])
    return SparseWeight(first.format, shape, first.dtype, sum(w.nnz for w in weights),
                        max(w.max_block_bytes for w in weights),
                        {payload_key: torch.cat(payloads), ptr_key: torch.cat(ptrs)})


def _check_stackable(weights: list[SparseWeight]) -> None:
    if not weights:
        raise ValueError("cat_rows needs at least one weight")
    first = weights[0]
    for i, w in enumerate(weights):
        if not isinstance(w, SparseWeight):
            raise TypeError(f"cat_rows: part {i} is a {type(w).__name__}, not a SparseWeight")
        for what, mine, theirs in (("format", w.format, first.format), ("dtype", w.dtype, first.dtype),
                                   ("K", w.shape[1], first.shape[1]), ("device", w.device, first.device)):
            if mine != theirs:
                raise ValueError(f"cat_rows: part {i} has {what} {mine}, part 0 has {theirs}")
        if i < len(weights) - 1 and w.shape[0] % BLOCK:
            raise ValueError(f"cat_rows: part {i} has M = {w.shape[0]}, not a multiple of {BLOCK} "
                             "(only the last part may end in a partial row block)")
