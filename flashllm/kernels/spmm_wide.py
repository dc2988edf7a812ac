"""Launch the wide kernel (csrc/spmm_wide.cu, sm_90a): bitmap and pair-bitmap weights times 17-1024 tokens, X
through a TMA tensor map, a stream-K grid whose split tiles sum through fp32 partials and arrival counters."""

from __future__ import annotations

import ctypes

import torch

from ..formats import SparseWeight, codec_for
from ..formats.layout import BLOCK, block_grid
from . import jit
from .common import Params, pointer
from .rules import WIDE_FORMATS, WIDE_GROUPS, WIDE_NT_CHOICES, WIDE_STAGES, Config

PROGRAM = "spmm_wide.cu"


def variants() -> list[str]:
    names = []
    for fmt in WIDE_FORMATS:
        for bf16 in (False, True):
            for nt in WIDE_NT_CHOICES:
                for stages in sorted({3, WIDE_STAGES[nt]}):
                    for groups in WIDE_GROUPS[nt]:
                        names.append(Config(groups, nt, stages, 1, 1, 0, 0, True, wide=True).name(fmt, bf16))
    return names


class TmaMap(ctypes.Structure):
    """csrc/spmm_wide.cu `struct TmaMap`: a CUtensorMap, 128 bytes, passed to the kernel by value."""
    _fields_ = [("opaque", ctypes.c_uint64 * 16)]


def x_tensor_map(x: torch.Tensor, nt: int) -> TmaMap:
    """The wide kernel's TMA descriptor of X [N, K] (prepared: rows 16-byte aligned, K padded to 8 with
    zeros): boxes of 64 K-values x 8 * nt tokens, 128-byte swizzle, zeros past the edges."""
    from cuda.bindings import driver as d
    n, k = x.shape
    dtype = (d.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 if x.dtype == torch.bfloat16
             else d.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT16)
    err, tmap = d.cuTensorMapEncodeTiled(
        dtype, 2, x.data_ptr(), [d.cuuint64_t(k), d.cuuint64_t(n)], [d.cuuint64_t(x.stride(0) * x.element_size())],
        [d.cuuint32_t(BLOCK), d.cuuint32_t(8 * nt)], [d.cuuint32_t(1), d.cuuint32_t(1)],
        d.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE, d.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        d.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        d.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if int(err) != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed: {err!r} (X {tuple(x.shape)}, stride {x.stride(0)})")
    out = jit.aligned(TmaMap, 128)  # CUtensorMap is alignas(128) in cuda.h
    ctypes.memmove(ctypes.addressof(out), tmap.getPtr(), ctypes.sizeof(TmaMap))
    return out


class WideLaunch:
    """One config's launch for N tokens through one weight, decided once: kernel, grid, Params, and the tensor
    map of X, re-encoded only when X's row stride changes (X's address is patched in per call, through
    cuTensorMapReplaceAddress).  Split tiles need a workspace per call: fp32 partials (two slots a CTA) and
    zeroed arrival counters, one allocation."""

    def __init__(self, w: SparseWeight, n: int, cfg: Config, device_index: int):
        m, k = w.shape
        kernel = jit.get_kernel(cfg.name(w.format, w.dtype == torch.bfloat16), device_index,
                                jit.capability(device_index), PROGRAM)
        self.cfg, self.device = cfg, torch.device("cuda", device_index)
        mb, kb = block_grid((m, k))
        tiles_m, tiles_n, _ = cfg.grid(m, n)
        tiles = tiles_m * tiles_n
        self.counters = tiles if tiles % cfg.ctas else 0  # some ranges split tiles: partials and counters
        counter_bytes = -(-4 * tiles // 256) * 256
        self.workspace = counter_bytes + 4 * cfg.ctas * 2 * cfg.spw * BLOCK * 8 * cfg.nt if self.counters else 0
        data, ptr = (w.tensors[key] for key in codec_for(w.format).TENSORS)
        self.params = Params(data.data_ptr(), ptr.data_ptr(), 0, 0, 0, m, n, k, 0, mb, kb, cfg.kb_per_split,
                             cfg.stage_w_bytes, 0, int(cfg.cluster), cfg.w_stages, 0)
        self.tmap, self.tmap_ldx, self.tmap_x = jit.aligned(TmaMap, 128), -1, 0
        self.launcher = jit.Launcher(kernel, (cfg.ctas, 1, 1), cfg.threads, cfg.smem, [self.params, self.tmap])
        self.counter_offset = counter_bytes

    def __call__(self, x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None, stream: int) -> None:
        """x [N, ldx] prepared (common.prepare_x), y [N, M]; the caller holds the route's lock."""
        p = self.params
        p.x, p.ldx, p.y, p.bias = x.data_ptr(), x.stride(0), y.data_ptr(), pointer(bias)
        if p.ldx != self.tmap_ldx:
            ctypes.memmove(ctypes.addressof(self.tmap), ctypes.addressof(x_tensor_map(x, self.cfg.nt)),
                           ctypes.sizeof(TmaMap))
            self.tmap_ldx, self.tmap_x = p.ldx, p.x
        elif p.x != self.tmap_x:
            jit.replace_tensor_map_address(self.tmap, p.x)
            self.tmap_x = p.x
        if self.counters:
            workspace = torch.empty(self.workspace, dtype=torch.uint8, device=self.device)
            p.counters = workspace.data_ptr()
            p.partial = p.counters + self.counter_offset
            jit.memset32(p.counters, 0, self.counters, stream)
        self.launcher(stream)
