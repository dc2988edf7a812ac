"""Launch the sliced-ELL CUDA-core kernel (csrc/sell.cu) and its split-K reduce."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from ..formats import SparseWeight
from ..formats.sell import CHUNK, grid
from . import jit

MAX_PLANES = 4        # tokens per CTA = 8 * planes; more tokens -> more grid.y groups (weights re-read)
WARP_CHOICES = (2, 4, 8)
MAX_SPLIT = 8


class SellParams(ctypes.Structure):
    _fields_ = [("entries", ctypes.c_void_p), ("slice_ptr", ctypes.c_void_p), ("x", ctypes.c_void_p),
                ("y", ctypes.c_void_p), ("partial", ctypes.c_void_p),
                ("M", ctypes.c_int), ("N", ctypes.c_int), ("K", ctypes.c_int), ("ldx", ctypes.c_int),
                ("S", ctypes.c_int), ("C", ctypes.c_int), ("chunks_per_split", ctypes.c_int),
                ("bias", ctypes.c_void_p)]


@dataclass(frozen=True)
class SellConfig:
    planes: int            # 8-token planes of the X tile
    warps: int             # slices (32 rows each) per CTA
    chunks_per_split: int  # K chunks per grid.z slice
    split: int

    @property
    def smem(self) -> int:
        return self.planes * CHUNK * 16

    def name(self, bf16: bool) -> str:
        return f"spmm_sell<{self.planes},{self.warps},{'true' if bf16 else 'false'}>"


def choose_sell_config(m: int, k: int, n: int, sms: int, warps: int | None = None,
                       split: int | None = None) -> SellConfig:
    """planes: the fewest that cover min(N, 32) tokens.  warps: 4 (8 when the X tile is 64 KB or more,
    so that one tile serves more rows).  split: every chunk its own grid.z slice, up to 8, then fewer
    if the grid would still be several waves deep without it."""
    n_slices, n_chunks = grid((m, k))
    planes = min(MAX_PLANES, -(-min(n, 8 * MAX_PLANES) // 8))
    if warps is None:
        warps = 8 if planes >= 2 else 4
    if split is None:
        split = min(n_chunks, MAX_SPLIT)
    cps = -(-n_chunks // max(1, split))
    split = -(-n_chunks // cps)
    return SellConfig(planes, warps, cps, split)


def variants() -> list[str]:
    return [SellConfig(p, w, 1, 1).name(bf16) for p in range(1, MAX_PLANES + 1) for w in WARP_CHOICES
            for bf16 in (False, True)]


def launch_sell(x: torch.Tensor, w: SparseWeight, cfg: SellConfig, y: torch.Tensor,
                bias: torch.Tensor | None) -> None:
    """x [N, ldx] prepared (rows 16-byte aligned, ldx % 8 == 0); y [N, M] in x's dtype."""
    m, k = w.shape
    n = x.shape[0]
    dev = x.device.index
    cap = jit.capability(dev)
    bf16 = w.dtype == torch.bfloat16
    n_slices, n_chunks = grid((m, k))
    kernel = jit.get_kernel(cfg.name(bf16), dev, cap, program="sell.cu")
    partial = torch.empty((cfg.split, n, m), dtype=torch.float32, device=x.device) if cfg.split > 1 else None
    params = SellParams(w.tensors["entries"].data_ptr(), w.tensors["slice_ptr"].data_ptr(), x.data_ptr(),
                        y.data_ptr(), partial.data_ptr() if partial is not None else 0,
                        m, n, k, x.stride(0), n_slices, n_chunks, cfg.chunks_per_split,
                        bias.data_ptr() if bias is not None else 0)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    ctas = (-(-n_slices // cfg.warps), -(-n // (8 * cfg.planes)), cfg.split)
    kernel.launch(ctas, cfg.smem, stream, params, threads=32 * cfg.warps)
    if partial is not None:
        from .dispatch import launch_reduce
        launch_reduce(partial, y, cfg.split, bias, m, dev, cap, stream)
