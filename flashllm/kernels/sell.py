"""Launch the sliced-ELL CUDA-core kernel (csrc/sell.cu) and its split-K reduce; expand sliced ELL to dense."""

from __future__ import annotations

import ctypes

import torch

from ..formats import SparseWeight
from ..formats.sell import CHUNK, SLICE, grid
from . import jit
from .reduce import Reduce, ReducedLaunch
from .rules import SELL_DEPTH_CHOICES, SELL_MAX_PLANES, SELL_TOKEN_CHOICES, SELL_WARP_CHOICES, SellConfig

PROGRAM = "sell.cu"


class SellParams(ctypes.Structure):
    """csrc/sell.cu `struct SellParams` (checked field by field in CI: tests/kernels/test_structs.py)."""
    _fields_ = [("entries", ctypes.c_void_p), ("slice_ptr", ctypes.c_void_p), ("x", ctypes.c_void_p),
                ("y", ctypes.c_void_p), ("partial", ctypes.c_void_p),
                ("M", ctypes.c_int), ("N", ctypes.c_int), ("K", ctypes.c_int), ("ldx", ctypes.c_int),
                ("S", ctypes.c_int), ("C", ctypes.c_int), ("chunks_per_split", ctypes.c_int),
                ("parts", ctypes.c_int), ("bias", ctypes.c_void_p)]


def variants() -> list[str]:
    shapes = [(t, 1) for t in SELL_TOKEN_CHOICES[:-1]] + [(8, p) for p in range(1, SELL_MAX_PLANES + 1)]
    return [SellConfig(p, w, 1, 1, d, 1, t).name(bf16) for t, p in shapes for w in SELL_WARP_CHOICES
            for d in SELL_DEPTH_CHOICES for bf16 in (False, True)] + ["sell_decompress<false>"]


class SellLaunch(ReducedLaunch):
    """One config's launch for N tokens through one sliced-ELL weight, decided once (kernel, grid, SellParams,
    the reduce of its split); a call sets x, y, bias (and the fp32 partials)."""

    def __init__(self, w: SparseWeight, n: int, cfg: SellConfig, device_index: int):
        m, k = w.shape
        kernel = jit.get_kernel(cfg.name(w.dtype == torch.bfloat16), device_index, jit.capability(device_index),
                                PROGRAM)
        n_slices, n_chunks = grid((m, k))
        self.device = torch.device("cuda", device_index)
        self.partial_shape = (cfg.split, n, m) if cfg.split > 1 else None
        self.reduce = Reduce(cfg.split, n, m, w.dtype == torch.bfloat16, device_index) if cfg.split > 1 else None
        self.params = SellParams(w.tensors["entries"].data_ptr(), w.tensors["slice_ptr"].data_ptr(), 0, 0, 0,
                                 m, n, k, 0, n_slices, n_chunks, cfg.chunks_per_split, cfg.parts, 0)
        self.launcher = jit.Launcher(kernel, cfg.grid(m, k, n), 32 * cfg.warps, cfg.smem, [self.params])


def decompress_sell(w: SparseWeight, row0: int, rows: int) -> torch.Tensor:
    """Rows [row0, row0 + rows) of W dense (row0 a multiple of 32), one launch, no host sync."""
    m, k = w.shape
    n_slices, n_chunks = grid((m, k))
    out = torch.empty((rows, k), dtype=w.dtype, device=w.device)
    dev = w.device.index
    kernel = jit.get_kernel("sell_decompress<false>", dev, jit.capability(dev), PROGRAM)
    smem = SLICE * CHUNK * 2  # the (slice, chunk) tile
    kernel.allow_smem(smem)
    kernel.launch_args((n_chunks, -(-rows // SLICE), 1), (512, 1, 1), torch.cuda.current_stream(w.device).cuda_stream,
                       [w.tensors["entries"].data_ptr(), w.tensors["slice_ptr"].data_ptr(), out.data_ptr(),
                        ctypes.c_int(row0), ctypes.c_int(rows), ctypes.c_int(k), ctypes.c_int(n_chunks)], smem=smem)
    return out
