"""Static KV cache: keys and values of every slot, preallocated once, written in place.

Layout [B, H_kv, max_seq, D]. A batch of prompts of different lengths is *left-padded*: every
sequence writes the same slot at each step (the prompt's last token sits in slot T-1 for all), so
one slot index serves the whole batch and a decode step has the same shapes at every position,
which is what a CUDA graph needs. Sequence b's first real token is in slot `starts[b]`; its
position (for RoPE or OPT's learned embeddings) in slot j is j - starts[b]. Attention masks out
slots before `starts[b]` and after the current one.
"""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    def __init__(self, batch: int, kv_heads: int, max_seq: int, head_dim: int, dtype: torch.dtype, device=None):
        super().__init__()
        shape = (batch, kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [b, H_kv, T, D] at `slots` [T] (int64, on the device) for the first b sequences;
        return the caches of those b sequences. No host sync: the slots stay on the device."""
        b = k.shape[0]
        keys, values = self.k[:b], self.v[:b]
        keys.index_copy_(2, slots, k)
        values.index_copy_(2, slots, v)
        return keys, values

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
