"""Expand a compressed weight to dense: the decompress kernel (csrc/decompress.cu; sliced ELL's in sell.cu), and
the large-N path built on it, a chunk of rows at a time then cuBLAS.

Memory stays bounded: at most `chunk_bytes` of dense weight exist at once.
"""

from __future__ import annotations

import ctypes

import torch

from ..formats import SparseWeight, codec_for
from ..formats.base import FORMAT_IDS
from ..formats.layout import BLOCK, block_grid
from ..formats.sell import grid as sell_grid
from . import jit
from .rules import THREADS
from .sell import decompress_sell

PROGRAM = "decompress.cu"
CHUNK_BYTES = 256 << 20
DECOMPRESS_KPER = 8  # K-blocks a decompress CTA expands in turn (csrc/decompress.cu DECOMPRESS_KPER)
DECOMPRESS_STAGES = 3  # its cp.async ring (csrc/decompress.cu DECOMPRESS_STAGES)
BLOCK_FORMATS = ("bitmap", "tiled_csl", "pairmap")


def variants() -> list[str]:
    return [f"decompress<{FORMAT_IDS[fmt]}>" for fmt in BLOCK_FORMATS]


def decompress_cuda(w: SparseWeight, mb0: int = 0, mb1: int | None = None) -> torch.Tensor:
    """Rows [64*mb0, 64*mb1) of W as a dense tensor, one kernel launch, no host sync (graph-safe)."""
    m, k = w.shape
    mb, kb = block_grid((m, k))
    mb1 = mb if mb1 is None else mb1
    rows = min(m, mb1 * BLOCK) - mb0 * BLOCK
    if w.format == "sell":
        with jit.on_device(w.device):
            return decompress_sell(w, mb0 * BLOCK, rows)
    out = torch.empty((rows, k), dtype=w.dtype, device=w.device)
    dev = w.device.index
    data, ptr = (w.tensors[key] for key in codec_for(w.format).TENSORS)
    stage = -(-w.max_block_bytes // 16) * 16 + 16  # +16: the decoder may peek 2 bytes past a stream
    smem = DECOMPRESS_STAGES * stage + BLOCK * BLOCK * 2 + (THREADS // 32) * 128  # the ring, dense tile, popcounts
    with torch.cuda.device(w.device):
        kernel = jit.get_kernel(f"decompress<{FORMAT_IDS[w.format]}>", dev, jit.capability(dev), PROGRAM)
        kernel.allow_smem(smem)
        kernel.launch_args((-(-kb // DECOMPRESS_KPER), mb1 - mb0, 1), (THREADS, 1, 1),
                           torch.cuda.current_stream(w.device).cuda_stream,
                           [data.data_ptr(), ptr.data_ptr(), out.data_ptr(), ctypes.c_int(mb0), ctypes.c_int(rows),
                            ctypes.c_int(k), ctypes.c_int(kb), ctypes.c_int(stage)], smem=smem)
    return out


def row_blocks(w: SparseWeight, mb0: int, mb1: int) -> SparseWeight:
    """Rows [64*mb0, 64*mb1) of W as a SparseWeight sharing storage (blocks are row-block-major).

    Reads two offsets on the host: CPU path only (on the GPU `decompress_cuda` takes mb0 directly).
    """
    m, k = w.shape
    data_key, ptr_key = codec_for(w.format).TENSORS
    if w.format == "sell":  # two 32-row slices per row block, one record per (slice, K chunk)
        per_block = 2 * sell_grid(w.shape)[1]
    else:
        per_block = -(-k // BLOCK)
    ptr = w.tensors[ptr_key][mb0 * per_block: mb1 * per_block + 1]
    data = w.tensors[data_key][int(ptr[0]):int(ptr[-1])]
    rows = min(m, mb1 * BLOCK) - mb0 * BLOCK
    return SparseWeight(w.format, (rows, k), w.dtype, 0, w.max_block_bytes, {data_key: data, ptr_key: ptr - ptr[0]})


def _expand(w: SparseWeight, mb0: int, mb1: int) -> torch.Tensor:
    if w.device.type == "cuda" and jit.capability(w.device.index) >= (8, 0):
        return decompress_cuda(w, mb0, mb1)  # reads the offsets on the GPU: no host sync
    return row_blocks(w, mb0, mb1).to_dense()


def dense_matmul(x: torch.Tensor, w: SparseWeight, chunk_bytes: int = CHUNK_BYTES,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    m, k = w.shape
    mb = -(-m // BLOCK)
    chunks = -(-mb // max(1, chunk_bytes // (BLOCK * k * 2)))
    step = -(-mb // chunks)  # balanced: a last chunk of a few rows makes a GEMM that fills the GPU badly
    compute = x.dtype if x.dtype == w.dtype else torch.float32
    x2 = x.reshape(-1, k).to(compute)
    y = torch.empty((x2.shape[0], m), dtype=compute, device=x.device)
    for mb0 in range(0, mb, step):
        mb1 = min(mb, mb0 + step)
        dense = _expand(w, mb0, mb1).to(compute)
        # Straight into y's columns (cuBLAS takes the row stride as its leading dimension): no concatenation
        out = y[:, mb0 * BLOCK:mb0 * BLOCK + dense.shape[0]]
        if bias is None:
            torch.mm(x2, dense.t(), out=out)
        else:
            torch.addmm(bias[mb0 * BLOCK:mb0 * BLOCK + dense.shape[0]].to(compute), x2, dense.t(), out=out)
    return y.to(x.dtype).reshape(*x.shape[:-1], m)
