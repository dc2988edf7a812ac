"""`flashllm::spmm` as a torch custom op: one graph node under torch.compile, capturable in CUDA graphs.

The kernel launches on the current stream, allocates only through the caching allocator and never
syncs with the host, which is what CUDA-graph capture needs.
"""

from __future__ import annotations

import torch

from ..formats import FORMATS, SparseWeight, codec_for


@torch.library.custom_op("flashllm::spmm", mutates_args=())
def _spmm(x: torch.Tensor, data: torch.Tensor, ptr: torch.Tensor, fmt: int, m: int, k: int,
          bf16: bool, max_block_bytes: int, bias: torch.Tensor | None) -> torch.Tensor:
    dtype = torch.bfloat16 if bf16 else torch.float16
    from .dispatch import run
    name = FORMATS[fmt]
    tensors = dict(zip(codec_for(name).TENSORS, (data, ptr)))
    w = SparseWeight(name, (m, k), dtype, 0, max_block_bytes, tensors)
    return run(x, w, bias)


@_spmm.register_fake
def _(x, data, ptr, fmt, m, k, bf16, max_block_bytes, bias):
    return x.new_empty((x.shape[0], m))


def spmm_op(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    data, ptr = (w.tensors[name] for name in codec_for(w.format).TENSORS)
    return _spmm(x, data, ptr, FORMATS.index(w.format), w.shape[0], w.shape[1],
                 w.dtype == torch.bfloat16, w.max_block_bytes, bias)
